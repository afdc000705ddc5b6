"""Biphasic, charge-balanced square pulses with polarity alternation, counted in loop ticks.

One period holds a pair of equal phases and then a rest::

    |<-- phase -->|<-- phase -->|<------ rest ------>|
     +A (or -A)     -A (or +A)        0

Successive pairs start with alternating polarity. Time is counted in whole ticks, and the second
phase replays the amplitudes the first one used tick by tick (the "mirror"), so a pair carries zero
net charge by construction even while the amplitude ramps. During a ramp down the second phase
takes the lower of the mirror and the falling amplitude: stopping quickly matters more than the
last fraction of a microcoulomb, which the loop still measures and trims.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WaveformSpec:
    frequency_hz: float
    pulse_width_ms: float  # width of one phase


class Waveform:
    __slots__ = ("spec", "period_ticks", "phase_ticks", "t", "pair", "first", "_mirror")

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

    def step(self, amplitude_ua: float) -> tuple[float, bool]:
        """Signed current for this tick (uA) and whether a pair just ended."""
        t = self.t
        ph = self.phase_ticks
        if t < ph:
            self._mirror[t] = amplitude_ua
            out = self.first * amplitude_ua
        elif t < 2 * ph:
            m = self._mirror[t - ph]
            out = -self.first * (m if m <= amplitude_ua else amplitude_ua)
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

    @property
    def at_pair_start(self) -> bool:
        return self.t == 0

    @property
    def in_second_phase(self) -> bool:
        return self.phase_ticks <= self.t < 2 * self.phase_ticks
