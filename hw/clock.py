"""Injected clocks. Everything that measures or waits takes one, so tests step time exactly."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...


class MonotonicClock:
    """Real time: ``time.monotonic`` (CLOCK_MONOTONIC, shared by every process on the machine)."""

    now = staticmethod(time.monotonic)


class SimClock:
    """Simulated time that moves only when told to."""

    def __init__(self, start_s: float = 1000.0):
        self._t = float(start_s)

    def now(self) -> float:
        return self._t

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError("time does not run backwards")
        self._t += dt_s

    def set(self, t_s: float) -> None:
        if t_s < self._t:
            raise ValueError("time does not run backwards")
        self._t = t_s


class TickClock(SimClock):
    """Simulated time for a daemon on the *simulated* board that runs in real time beside a test
    (``python -m hw --sim --sim-time``): it moves only when the loop's runner moves it, once a
    tick, by the real time since the previous tick but never by more than the step the runner had
    scheduled (:meth:`hw.control.runner.LoopRunner`).

    Why: on a loaded or virtual machine the whole real-time process can be held off its CPU for
    10 ms and more (a vCPU stolen by the hypervisor, measured here), and on real time every such
    pause is a ``LOOP_STALL`` (and, long enough, an expired lease) that the test did not ask for.
    On this clock a pause of the host is a pause of the simulated world: the loop, the board's
    physics, the lease and the heartbeat deadlines, the self-test and the supervisor all read it,
    so what a test checks depends on the commands and the ticks, not on the host. Faults that a
    test injects (a hung loop: ``LoopRunner.inject_stall``) still move it, and are still seen.

    Never on a real board: ``python -m hw.control.rt`` refuses ``--sim-time`` without ``--sim``;
    the appliance, ``run-sim``, the demo and every benchmark run on :class:`MonotonicClock`."""

    def __init__(self, start_s: float | None = None):
        # A SimClock that starts near real time (the service's CLOCK_MONOTONIC stamps stay close).
        super().__init__(time.monotonic() if start_s is None else start_s)
