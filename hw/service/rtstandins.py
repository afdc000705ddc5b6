"""The service's stand-ins for the real-time process's Guard and board (hw/service/rtlink.py uses
them).

:class:`GuardProxy` shows the guard's latch as the real-time process last reported it and asks it
for a trip; :class:`BoardProxy` gives the service what it used of the board: the buzzer (the
engine's cues) and, on the simulated board, the ``sim`` panel's fault injection and skin.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hw.control import channel as C
from hw.control.channel import Cmd
from hw.control.loop import CommandRefused
from hw.safety import FAULT_TEXT, Fault, FaultRecord

if TYPE_CHECKING:
    from hw.service.rtlink import LoopProxy


class GuardProxy:
    """The real-time process's Guard as the service sees it (trip() asks for a trip there)."""

    def __init__(self, link: LoopProxy):
        self._link = link
        self.fault: FaultRecord | None = None
        self.alarm: FaultRecord | None = None
        self.post_valid = False
        self._tripped = False

    @property
    def tripped(self) -> bool:
        return self._tripped or self.fault is not None

    def trip(self, code: Fault, detail: str = "") -> FaultRecord | None:
        try:
            self._link._call(Cmd.TRIP, C.FAULTS.index(code), text=detail)
        except CommandRefused:
            pass  # lost: the fault is latched here already, and the dead-man opens the relay
        return self.fault

    def _local(self, code: Fault, detail: str) -> None:
        if self.fault is None:
            self.fault = FaultRecord(code, *FAULT_TEXT[code], detail, time.monotonic())
        self._tripped = True
        self.post_valid = False


class _Buzzer:
    def __init__(self, link: LoopProxy):
        self._link = link

    def on(self) -> None:
        self._link._send(Cmd.BUZZER, 1.0)

    def off(self) -> None:
        self._link._send(Cmd.BUZZER, 0.0)


class _Lines:
    def __init__(self, link: LoopProxy):
        self.buzzer = _Buzzer(link)


class SimProxy:
    """The simulated board's fault injection and skin (the ``sim`` command), in the RT process."""

    def __init__(self, link: LoopProxy):
        self._link = link
        self.active_faults: frozenset[str] = frozenset()

    def _do(self, cmd: Cmd, name: str) -> None:
        text = self._link._call(cmd, text=name)
        self.active_faults = frozenset(n for n in text.split(",") if n)

    def inject(self, fault: str) -> None:
        self._do(Cmd.SIM_INJECT, fault)

    def clear(self, fault: str) -> None:
        self._do(Cmd.SIM_CLEAR, fault)

    def set_skin(self, skin: str) -> None:
        self._do(Cmd.SIM_SKIN, skin)


class BoardProxy:
    """What the service used of the board: the buzzer, the sim panel, close()."""

    def __init__(self, link: LoopProxy, sim: bool):
        self.lines = _Lines(link)
        self.sim = SimProxy(link) if sim else None

    def close(self) -> None:
        """The real-time process closes its board itself (output enable low first)."""
