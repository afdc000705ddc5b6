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
