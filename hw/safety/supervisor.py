"""The loop supervisor: another thread that trips ``LOOP_STALL`` when the loop stops ticking, and
the systemd watchdog's view of the real-time core's health (loop, ADC and supervisor all fresh)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from hw.clock import Clock
from hw.control.runner import _tune_thread
from hw.control.state import ACTIVE, OutputState
from hw.safety.faults import Fault

if TYPE_CHECKING:
    from hw.control.loop import ControlLoop


class Supervisor:
    """Another thread that trips when the loop stops ticking. Also the watchdog's health view."""

    def __init__(self, loop: ControlLoop, clock: Clock):
        self.loop = loop
        self.clock = clock
        self.stall_s = loop.cfg.loop.stall_ms / 1000.0
        self.adc_stale_s = loop.cfg.loop.adc_stale_ms / 1000.0
        self.period_s = loop.cfg.loop.supervisor_period_ms / 1000.0
        self.last_check_s = clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One supervision pass; returns whether the loop is fresh."""
        now = self.clock.now()
        self.last_check_s = now
        fresh = now - self.loop.last_tick_s <= self.stall_s
        if not fresh and self.loop.state in ACTIVE | {OutputState.POST}:
            self.loop.guard.trip(
                Fault.LOOP_STALL, f"no tick for {(now - self.loop.last_tick_s) * 1000:.1f} ms"
            )
        return fresh

    def healthy(self) -> bool:
        """All liveness inputs fresh: the loop ticks, the ADC answers, the supervisor runs."""
        now = self.clock.now()
        loop = self.loop
        return (
            now - loop.last_tick_s <= self.stall_s
            and now - loop.last_adc_s <= self.adc_stale_s
            and now - self.last_check_s <= 10 * self.period_s
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loop-supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _tune_thread(max(0, self.loop.cfg.loop.realtime_priority - 1))
        while not self._stop.wait(self.period_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
