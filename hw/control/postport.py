"""The loop's side of the self-test: the narrow port (hw.safety.selftest.PostPort) POST drives.

Every switch-on goes through the guard's one guarded enable, every bus access holds the bus lock,
and the calibration POST measures lands in the loop's conversions as it is measured (the later
steps drive and read through it). Built when a self-test starts, on the loop's thread; POST runs
inside the loop's ticks (``ControlLoop._post_tick``), so the port is only used from that thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hw.hal.chips.mcp4922 import CHANNEL_B, DacWord
from hw.safety import Fault

if TYPE_CHECKING:
    from hw.control.loop import ControlLoop


class LoopPostPort:
    """A :class:`hw.safety.selftest.PostPort` over one :class:`ControlLoop`."""

    __slots__ = ("_loop", "_board", "cfg", "lines")

    def __init__(self, loop: ControlLoop):
        self._loop = loop
        self._board = loop.board
        self.cfg = loop.cfg
        self.lines = loop.board.lines

    def now(self) -> float:
        return self._loop.clock.now()

    def begin(self) -> int:
        return self._loop.guard.begin_post()

    def confirm(self, epoch: int) -> bool:
        return self._loop.guard.confirm_post(epoch)

    def fail(self, detail: str) -> None:
        self._loop.guard.trip(Fault.POST_FAILED, detail)

    def enable(self, relay: bool = True) -> bool:
        return self._loop.guard.enable(relay=relay)

    def set_dac(self, code: int) -> None:
        b = self._board
        with b.bus_lock:
            b.dac.write_a(code)

    def set_dac_ua(self, ua: float) -> None:
        self.set_dac(self._loop._to_code(ua))

    def set_threshold(self, ua: float) -> None:
        fe = self.cfg.hardware.front_end
        code = max(1, min(4095, round(ua / fe.threshold_ua_per_code)))
        b = self._board
        with b.bus_lock:
            b.dac.write(DacWord(CHANNEL_B, code))

    def mean_current(self, n: int) -> float:
        # loop.read_current looked up each time: the one conversion the loop's checks also use.
        loop = self._loop
        total = 0.0
        with self._board.bus_lock:
            for _ in range(n):
                total += loop.read_current()[1]
        return total / n

    def read_mean(self, channel: int, n: int) -> float:
        b = self._board
        with b.bus_lock:
            return sum(b.adc.read(channel) for _ in range(n)) / n

    def read_codes(self, channel: int, n: int) -> list[int]:
        b = self._board
        with b.bus_lock:
            return [b.adc.read(channel) for _ in range(n)]

    def kick(self) -> None:
        self._loop.kick_once()

    def set_adc_offset(self, codes: float) -> None:
        self._loop.adc_offset_codes = codes

    def set_calibration(self, gain: float, offset_ua: float) -> None:
        loop = self._loop
        loop.cal_gain, loop.cal_offset_ua = gain, offset_ua

    def report(self, result: dict | None) -> None:
        self._loop.post_result = result

    def event(self, kind: str, **data) -> None:
        self._loop._event(kind, **data)
