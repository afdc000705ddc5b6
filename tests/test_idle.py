"""The loop with the output off ticks slower (LoopRunner's idle pacing): every check that still
runs then keeps its bound, because it is judged in time. Simulated time: the rig is stepped at the
idle period, as the runner would."""

from __future__ import annotations

import pytest

from hw.config import load_config
from hw.control.loop import IDLE, RESHUTDOWN_MS, RESIDUAL_MS, OutputState
from hw.control.runner import idle_period_s
from hw.safety import Fault


def _step_idle(rig, period_s: float) -> None:
    """One tick as LoopRunner paces it: a whole idle period while the loop can idle, else one
    period of the full rate."""
    rig.clock.advance(period_s if rig.loop.can_idle() else rig.tick_s)
    rig.loop.tick()
    rig.supervisor.check()
    rig.sim.advance()


def test_the_idle_period_keeps_the_supervisors_and_the_watchdogs_bounds():
    cfg = load_config(env={})
    lp = cfg.loop
    period = idle_period_s(cfg)
    assert period == pytest.approx(4.0 / lp.rate_hz)  # 2 ms with the packaged defaults
    assert period <= lp.stall_ms / 2000.0 and period <= lp.adc_stale_ms / 2000.0
    tight = cfg.model_copy(
        update={"loop": lp.model_copy(update={"stall_ms": 2.0, "adc_stale_ms": 1.0})}
    )
    assert idle_period_s(tight) == pytest.approx(0.0005)  # never slower than half of each
    assert OutputState.OFF in IDLE and OutputState.TRIPPED in IDLE
    assert not IDLE & {OutputState.POST, OutputState.LIFTED, OutputState.ON}


def test_residual_current_at_the_idle_rate_alarms_within_its_bound(running_rig):
    rig = running_rig
    rig.loop.stop()
    assert rig.run_leased_until(lambda: rig.loop.state == OutputState.OFF, 3.0)
    period = idle_period_s(rig.cfg)
    for _ in range(20):
        _step_idle(rig, period)
    assert rig.guard.alarm is None
    rig.sim.inject("welded_relay")
    rig.sim.inject("overcurrent")
    t0 = rig.clock.now()
    while rig.guard.alarm is None and rig.clock.now() - t0 < 0.1:
        _step_idle(rig, period)
    assert rig.guard.alarm is not None
    assert rig.guard.alarm.code == Fault.RESIDUAL_CURRENT
    # The bound of the full rate, RESIDUAL_MS, plus the one idle period it may take to see it
    # (a sample-counting debounce at a quarter of the rate would have needed 4x as long).
    assert rig.clock.now() - t0 <= RESIDUAL_MS / 1000.0 + period + 1e-9
    assert not rig.loop.can_idle()  # watched at the full rate while it flows


def test_the_shutdown_word_is_reissued_in_time_while_tripped_at_the_idle_rate(running_rig):
    rig = running_rig
    rig.guard.trip(Fault.INTERNAL, "test")
    rig.step()
    assert rig.loop.state == OutputState.TRIPPED
    period = idle_period_s(rig.cfg)
    dac = rig.sim.dac_bus
    n0, t0 = dac.transfers, rig.clock.now()
    while rig.clock.now() - t0 < 1.0:
        _step_idle(rig, period)
    # Each re-issue is three words (zero code, A shut down, B shut down), every RESHUTDOWN_MS.
    reissues = (dac.transfers - n0) / 3
    expected = 1.0 / (RESHUTDOWN_MS / 1000.0)
    assert expected - 1 <= reissues <= expected + 1
