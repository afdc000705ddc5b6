"""The biphasic waveform: every completed pair is charge-balanced by construction."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hw.control.waveform import Waveform, WaveformSpec

TICK_S = 0.0005  # the default 2 kHz loop

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fitting_specs(draw):
    """A spec whose phases fit, as (spec, period_ticks, phase_ticks)."""
    period = draw(st.integers(min_value=2, max_value=400))
    phase = draw(st.integers(min_value=1, max_value=period // 2))
    spec = WaveformSpec(1.0 / (period * TICK_S), phase * TICK_S * 1000.0)
    return spec, period, phase


amplitudes = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False, allow_infinity=False)


@st.composite
def rising_pairs(draw, period: int, n_pairs: int):
    """Amplitudes for ``n_pairs`` whole periods, never falling inside a pair (may fall between)."""
    seq = []
    for _ in range(n_pairs):
        a = draw(amplitudes)
        for _ in range(period):
            seq.append(a)
            a = min(1000.0, a + draw(st.floats(min_value=0.0, max_value=50.0)))
    return seq


def run(wave: Waveform, amps):
    outs, ends = [], []
    for a in amps:
        out, end = wave.step(a)
        outs.append(out)
        ends.append(end)
    return outs, ends


@SETTINGS
@given(data=st.data(), sp=fitting_specs(), n_pairs=st.integers(min_value=1, max_value=6))
def test_every_pair_is_balanced_while_the_amplitude_never_falls(data, sp, n_pairs):
    spec, period, phase = sp
    wave = Waveform(spec, TICK_S)
    assert (wave.period_ticks, wave.phase_ticks) == (period, phase)
    amps = data.draw(rising_pairs(period, n_pairs))
    outs, ends = run(wave, amps)
    for p in range(n_pairs):
        pair = outs[p * period : (p + 1) * period]
        a = amps[p * period : (p + 1) * period]
        first = 1.0 if p % 2 == 0 else -1.0
        # Exactly zero net charge (fsum: no rounding in the check itself).
        assert math.fsum(pair) == 0.0
        # The second phase mirrors the first tick by tick.
        for k in range(phase):
            assert pair[phase + k] == -pair[k]
            assert pair[k] == first * a[k]
        # Rest ticks carry nothing.
        assert all(x == 0.0 for x in pair[2 * phase :])
        # The pair-end flag is set on the last tick of each period and nowhere else.
        assert ends[p * period : (p + 1) * period] == [False] * (period - 1) + [True]
    assert wave.pair == n_pairs
    assert wave.at_pair_start


@SETTINGS
@given(sp=fitting_specs(), n_pairs=st.integers(min_value=2, max_value=8), a=amplitudes)
def test_polarity_alternates_pair_to_pair(sp, n_pairs, a):
    assume(a > 0.0)
    spec, period, phase = sp
    wave = Waveform(spec, TICK_S)
    outs, _ = run(wave, [a] * (period * n_pairs))
    signs = [math.copysign(1.0, outs[p * period]) for p in range(n_pairs)]
    second = [math.copysign(1.0, outs[p * period + phase]) for p in range(n_pairs)]
    for p in range(n_pairs):
        assert signs[p] == (1.0 if p % 2 == 0 else -1.0)
        assert second[p] == -signs[p]


@SETTINGS
@given(data=st.data(), sp=fitting_specs())
def test_a_falling_amplitude_never_overshoots_the_first_phase(data, sp):
    """While the amplitude falls, the second phase takes min(mirror, amplitude): |q2| <= |q1|."""
    spec, period, phase = sp
    wave = Waveform(spec, TICK_S)
    amps = data.draw(st.lists(amplitudes, min_size=period, max_size=period))
    outs, _ = run(wave, amps)
    q1 = math.fsum(outs[:phase])
    q2 = math.fsum(outs[phase : 2 * phase])
    assert q1 >= 0.0 and q2 <= 0.0
    assert -q2 <= q1
    for k in range(phase):
        assert abs(outs[phase + k]) <= min(amps[k], amps[phase + k])
    assert all(x == 0.0 for x in outs[2 * phase :])


@pytest.mark.parametrize(
    ("freq", "pw_ms"),
    [
        (50.0, 10.0),  # the tests' default: two 10 ms phases fill the 20 ms period
        (10.0, 40.0),  # demo program
        (1.0, 250.0),  # quick-tone
        (0.5, 500.0),  # full-face lift
    ],
)
def test_program_waveforms_fit_and_count_ticks(freq, pw_ms):
    w = Waveform(WaveformSpec(freq, pw_ms), TICK_S)
    assert w.period_ticks == round(1.0 / (freq * TICK_S))
    assert w.phase_ticks == round(pw_ms / 1000.0 / TICK_S)
    assert 2 * w.phase_ticks <= w.period_ticks


@pytest.mark.parametrize(
    ("freq", "pw_ms"),
    [
        (50.0, 10.5),  # two 21-tick phases do not fit a 40-tick period
        (100.0, 6.0),  # 12 + 12 ticks > 20
        (50.0, 0.2),  # shorter than one tick
        (50.0, 0.0),
        (2000.0, 0.5),  # one tick per period cannot hold two phases
    ],
)
def test_specs_that_do_not_fit_raise(freq, pw_ms):
    with pytest.raises(ValueError):
        Waveform(WaveformSpec(freq, pw_ms), TICK_S)


@pytest.mark.parametrize(("freq", "pw_ms"), [(1000.0, 0.5), (50.0, 10.0), (0.5, 1000.0)])
def test_phases_that_exactly_fill_the_period_are_accepted(freq, pw_ms):
    w = Waveform(WaveformSpec(freq, pw_ms), TICK_S)
    assert 2 * w.phase_ticks == w.period_ticks


@SETTINGS
@given(
    freq=st.floats(min_value=0.1, max_value=3000.0),
    pw_ms=st.floats(min_value=0.0, max_value=3000.0),
)
def test_a_spec_either_fits_or_raises(freq, pw_ms):
    period = round(1.0 / (freq * TICK_S))
    phase = round(pw_ms * 1e-3 / TICK_S)
    if phase >= 1 and 2 * phase <= period:
        w = Waveform(WaveformSpec(freq, pw_ms), TICK_S)
        assert (w.period_ticks, w.phase_ticks) == (period, phase)
    else:
        with pytest.raises(ValueError):
            Waveform(WaveformSpec(freq, pw_ms), TICK_S)


# ---------------------------------------------------------------------------- stop ramp


def _loop_ramp(a0: float, n: int) -> list[float]:
    """The amplitudes the control loop drives for a stop ramp (ControlLoop._drive_stop)."""
    return [a0 * (1.0 - k / n) for k in range(n)]


@SETTINGS
@given(
    data=st.data(),
    sp=fitting_specs(),
    a=st.floats(min_value=1.0, max_value=400.0),
    min_ticks=st.integers(min_value=1, max_value=800),
)
def test_stop_ramp_closes_the_open_pair(data, sp, a, min_ticks):
    spec, period, phase = sp
    wave = Waveform(spec, TICK_S)
    stop_at = data.draw(st.integers(min_value=0, max_value=period - 1))
    outs, _ = run(wave, [a] * stop_at)
    sign, a0, n = wave.stop_ramp(a, min_ticks)
    open_q = math.fsum(outs)  # signed charge of this pair so far, uA x ticks
    if stop_at == 0 or stop_at >= 2 * phase:
        # At a pair boundary or in the rest the pair is closed: nothing to do.
        assert n == 0 and abs(open_q) < 1e-6 * a * phase
        return
    assert n >= min_ticks
    assert sign == -math.copysign(1.0, open_q)
    ramp = math.fsum(_loop_ramp(a0, n))
    # What the loop drives closes the pair to within one ramp step (a0 / 2).
    assert abs(open_q + sign * ramp) <= a0 / 2 + 1e-9 * abs(open_q)


def test_stop_ramp_never_starts_above_the_present_amplitude():
    wave = Waveform(WaveformSpec(50.0, 10.0), TICK_S)
    run(wave, [200.0] * 20 + [170.0] * 5)
    sign, a0, n = wave.stop_ramp(170.0, 1)
    assert n > 0 and sign == -1.0
    assert a0 <= 170.0, f"the stop ramp starts at {a0:.3f} uA for a 170 uA amplitude"
