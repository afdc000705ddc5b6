"""The loop with the output off ticks slower (LoopRunner's idle pacing): every check that still
runs then keeps its bound, because it is judged in time. Simulated time: the rig is stepped at the
idle period, as the runner would."""

from __future__ import annotations

import pytest

from hw.config import load_config
from hw.control.loop import IDLE, OutputState
from hw.control.runner import LoopRunner, idle_period_s
from hw.hal.sim.rig import SimRig
from hw.safety import Fault
from hw.safety.thresholds import IDLE_PERIOD_MS, RESHUTDOWN_MS, RESIDUAL_MS


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
    assert period == pytest.approx(IDLE_PERIOD_MS / 1000.0)  # 20 ms
    assert period >= 1.0 / lp.rate_hz
    # The watchdog's view gets one idle period of slack on each freshness bound, so an idle loop
    # that ticks on time is healthy: the supervisor checks as often as the loop ticks.
    rig = SimRig(seed=1)
    try:
        for _ in range(5):
            _step_idle(rig, period)
            assert rig.loop.can_idle() and rig.supervisor.healthy()
        rig.clock.advance(period + lp.stall_ms / 1000.0 + 1e-4)  # one stall bound too late
        assert not rig.supervisor.healthy()
    finally:
        rig.close()
    assert OutputState.OFF in IDLE and OutputState.TRIPPED in IDLE
    assert not IDLE & {OutputState.POST, OutputState.LIFTED, OutputState.ON}


def test_the_watchdog_accepts_one_idle_period_of_adc_age_only_while_idle(rig):
    rig.step()
    sup, loop = rig.supervisor, rig.loop
    assert loop.can_idle()
    age = sup.adc_stale_s + idle_period_s(rig.cfg) / 2  # past the full rate's bound
    loop.last_adc_s = rig.clock.now() - age
    sup.check()
    assert sup.healthy()
    loop.last_adc_s = rig.clock.now() - (sup.adc_stale_s + idle_period_s(rig.cfg) + 1e-4)
    assert not sup.healthy()
    loop.state = OutputState.ON  # the same age while output flows: unhealthy
    loop.last_adc_s = rig.clock.now() - age
    assert not sup.healthy()


class _Waits:
    """Stands in for the supervisor's wake event: records each timeout it is asked to wait."""

    def __init__(self, sup, states, loop):
        self.timeouts: list[float] = []
        self._sup, self._states, self._loop = sup, list(states), loop

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        if self._states:
            self._loop.state = self._states.pop(0)
        else:
            self._sup._stop.set()
        return False

    def clear(self):
        pass

    def set(self):
        pass


def test_the_supervisor_checks_slower_while_idle_and_at_its_period_otherwise(rig):
    sup, loop = rig.supervisor, rig.loop
    rig.step()
    # The state the loop is in at each wait: idle, then a treatment, then idle again.
    waits = _Waits(sup, [OutputState.OFF, OutputState.ON, OutputState.ON, OutputState.OFF], loop)
    sup._wake = waits
    sup._run()
    loop.state = OutputState.OFF
    idle, busy = idle_period_s(rig.cfg), sup.period_s
    assert waits.timeouts == [idle, idle, busy, busy, idle]
    assert loop.on_busy == sup.wake  # the runner wakes it when the loop leaves its idle pace


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


class _PacedLoop:
    """Stands in for a ControlLoop under a LoopRunner: idle for a few ticks, then busy."""

    def __init__(self, cfg, idle_ticks: int, busy_ticks: int):
        self.cfg = cfg
        self.tick_s = 1.0 / cfg.loop.rate_hz
        self.ticks = 0
        self.overruns = 0
        self.on_command = None
        self.on_busy = self._busy
        self.busy_at: list[int] = []
        self._idle_ticks, self._end = idle_ticks, idle_ticks + busy_ticks
        self.runner = None

    def can_idle(self) -> bool:
        return self.ticks < self._idle_ticks

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks >= self._end:
            self.runner._stop.set()

    def _busy(self) -> None:
        self.busy_at.append(self.ticks)


def test_the_runner_wakes_the_supervisor_on_the_tick_that_leaves_the_idle_pace():
    cfg = load_config(env={})
    loop = _PacedLoop(cfg, idle_ticks=3, busy_ticks=5)
    runner = LoopRunner(loop, stats_size=100)
    loop.runner = runner
    runner.start()  # its own thread (it takes real-time priority and a CPU of its own)
    runner._thread.join(5.0)
    assert not runner._thread.is_alive()  # the stand-in stopped it after its busy ticks
    assert loop.busy_at == [3]  # once, right after the tick that made it busy


def test_a_start_after_the_idle_pace_is_not_a_stall_but_a_gap_during_output_is(rig):
    from tests.conftest import RUNNING_SPEC, RUNNING_TARGET_UA

    result = rig.post()
    assert result is not None and result["passed"], result
    period = idle_period_s(rig.cfg)
    assert period > rig.cfg.loop.stall_ms / 1000.0  # the idle gap is longer than a stall
    for _ in range(5):
        _step_idle(rig, period)
    rig.loop.start(RUNNING_SPEC, RUNNING_TARGET_UA)
    rig.loop.renew_lease()
    rig.loop.service_beat()
    _step_idle(rig, period)  # the tick that applies the start comes one idle period later
    assert not rig.guard.tripped, rig.guard.fault
    assert rig.loop.state not in IDLE
    for _ in range(20):
        rig.step()
    assert not rig.guard.tripped, rig.guard.fault
    assert rig.loop.gap_max_s < rig.cfg.loop.stall_ms / 1000.0  # idle gaps are not counted
    rig.clock.advance(rig.cfg.loop.stall_ms / 1000.0 + 1e-3)  # now a real stall, output on
    rig.loop.tick()
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.LOOP_STALL
