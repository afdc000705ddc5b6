"""The loop supervisor: another thread that trips ``LOOP_STALL`` when the loop stops ticking, and
the systemd watchdog's view of the real-time core's health (loop, ADC and supervisor all fresh)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from hw.clock import Clock
from hw.control.runner import _tune_thread, idle_period_s
from hw.control.state import ACTIVE, OutputState
from hw.safety.faults import Fault

if TYPE_CHECKING:
    from hw.control.loop import ControlLoop


class Supervisor:
    """Another thread that trips when the loop stops ticking. Also the watchdog's health view.

    It checks every ``supervisor_period_ms`` while the loop is active or in its self-test, the
    states in which a stall trips. While the loop idles (output off or tripped, nothing flowing)
    a stall cannot trip, so it checks once per idle period of the loop, and the runner wakes it
    (:meth:`wake`, through ``loop.on_busy``) on the tick that leaves the idle pace: a stall is
    never judged late."""

    def __init__(self, loop: ControlLoop, clock: Clock):
        self.loop = loop
        self.clock = clock
        self.stall_s = loop.cfg.loop.stall_ms / 1000.0
        self.adc_stale_s = loop.cfg.loop.adc_stale_ms / 1000.0
        self.period_s = loop.cfg.loop.supervisor_period_ms / 1000.0
        # While idle the loop ticks and samples once per idle period, and this thread checks as
        # often: each freshness bound of healthy() gets one idle period on top.
        self.idle_period_s = idle_period_s(loop.cfg)
        self.last_check_s = clock.now()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        loop.on_busy = self.wake

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
        """All liveness inputs fresh: the loop ticked within ``stall_ms``, the ADC answered within
        ``adc_stale_ms``, the supervisor ran within 10 of its periods; each plus one idle period
        while the loop is at its idle pace."""
        now = self.clock.now()
        loop = self.loop
        slack = self.idle_period_s if loop.can_idle() else 0.0
        return (
            now - loop.last_tick_s <= self.stall_s + slack
            and now - loop.last_adc_s <= self.adc_stale_s + slack
            and now - self.last_check_s <= 10 * self.period_s + slack
        )

    def wake(self) -> None:
        """Check now and at the full period from here on (the loop left its idle pace)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loop-supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _tune_thread(max(0, self.loop.cfg.loop.realtime_priority - 1))
        loop, wake, stop = self.loop, self._wake, self._stop
        busy_s, idle_s = self.period_s, self.idle_period_s
        while not stop.is_set():
            wake.wait(idle_s if loop.can_idle() else busy_s)
            wake.clear()
            if stop.is_set():
                return
            self.check()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)
