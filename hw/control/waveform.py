"""Biphasic, charge-balanced square pulses with polarity alternation, counted in loop ticks.

One period holds a pair of equal phases and then a rest::

    |<-- phase -->|<-- phase -->|<------ rest ------>|
     +A (or -A)     -A (or +A)        0

Successive pairs start with alternating polarity. Time is counted in whole ticks, and the second
phase replays the amplitudes the first one used tick by tick (the "mirror"), so a pair carries zero
net charge by construction even while the amplitude ramps. During a ramp down the second phase
takes the lower of the mirror and the falling amplitude. A normal stop uses :meth:`stop_ramp`: it
switches to the polarity that closes the open pair and ramps to zero with exactly the charge that
balances it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WaveformSpec:
    frequency_hz: float
    pulse_width_ms: float  # width of one phase


class Waveform:
    __slots__ = ("spec", "period_ticks", "phase_ticks", "t", "pair", "first", "_mirror", "q1", "q2")

    def __init__(self, spec: WaveformSpec, tick_s: float):
        period = round(1.0 / (spec.frequency_hz * tick_s))
        phase = round(spec.pulse_width_ms * 1e-3 / tick_s)
        if phase < 1 or 2 * phase > period:
            raise ValueError(
                f"{spec.pulse_width_ms} ms phases do not fit {spec.frequency_hz} Hz at this tick"
            )
        self.spec = spec
        self.period_ticks = period
        self.phase_ticks = phase
        self.t = 0  # tick within the period
        self.pair = 0
        self.first = 1.0  # polarity of this pair's first phase
        self._mirror = [0.0] * phase
        self.q1 = 0.0  # this pair's first-phase charge so far, in uA x ticks
        self.q2 = 0.0  # and its second phase's

    def step(self, amplitude_ua: float) -> tuple[float, bool]:
        """Signed current for this tick (uA) and whether a pair just ended."""
        t = self.t
        ph = self.phase_ticks
        if t < ph:
            if t == 0:
                self.q1 = self.q2 = 0.0
            self._mirror[t] = amplitude_ua
            self.q1 += amplitude_ua
            out = self.first * amplitude_ua
        elif t < 2 * ph:
            m = self._mirror[t - ph]
            a = m if m <= amplitude_ua else amplitude_ua
            self.q2 += a
            out = -self.first * a
        else:
            out = 0.0
        t += 1
        if t >= self.period_ticks:
            self.t = 0
            self.pair += 1
            self.first = -self.first
            return out, True
        self.t = t
        return out, False

    def stop_ramp(self, amplitude_ua: float, min_ticks: int) -> tuple[float, float, int]:
        """How to stop with this pair balanced: (sign, start amplitude uA, ramp ticks).

        A linear ramp from ``a0`` to zero over ``n`` ticks carries ``a0 * n / 2``; it is given the
        polarity that closes the pair's open charge, lasts at least ``min_ticks`` and starts no
        higher than the present amplitude. Zero ticks: the pair is already balanced.
        """
        if self.t >= 2 * self.phase_ticks or (self.t == 0):
            return 0.0, 0.0, 0
        open_q = self.q1 - self.q2
        if open_q <= 0.0 or amplitude_ua <= 0.0:
            return 0.0, 0.0, 0
        n = max(min_ticks, math.ceil(2.0 * open_q / amplitude_ua - 1e-9))
        return -self.first, 2.0 * open_q / n, n

    def restart(self) -> None:
        """Begin a new pair at the next step (after a lift-off: the open pair's charge is returned
        by the loop's balance ramp, measured, so the mirror starts afresh)."""
        self.t = 0
        self.q1 = self.q2 = 0.0

    @property
    def at_pair_start(self) -> bool:
        return self.t == 0
