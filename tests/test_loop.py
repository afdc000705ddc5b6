"""The current loop in normal use: regulation, ramps, stops, levels, contact and charge balance."""

from __future__ import annotations

import math

import pytest

from hw.control.levels import LevelError, level_to_ua
from hw.control.loop import DITHER_CODES, CommandRefused, OutputState
from hw.control.waveform import WaveformSpec
from hw.hal.sim.plant import Load
from hw.hal.sim.rig import SimRig

SPEC = WaveformSpec(50.0, 10.0)


def leased(rig, seconds: float) -> None:
    rig.run_leased(seconds)


def leased_until(rig, pred, timeout_s: float) -> bool:
    return rig.run_leased_until(pred, timeout_s)


def set_load(rig, load) -> None:
    if isinstance(load, str):
        rig.sim.set_skin(load)
    else:
        rig.sim.set_load(Load.resistor(load))


def record(rig) -> list[tuple]:
    """Per tick: (t, state, amplitude, DAC command uA, true current uA, enable, stage target uA).

    The DAC command is nominal (it includes the calibration's offset correction); the stage
    target is what the healthy stage really drives for it."""
    log: list[tuple] = []

    def cb(r):
        p = r.sim.plant
        log.append(
            (
                r.clock.now(),
                r.loop.state,
                r.loop.amplitude_ua,
                p.i_command_ua,
                p.i_load_ua,
                p.enable,
                p.dac_target_ua,
            )
        )

    rig.on_tick = cb
    return log


def slew_per_tick(rig) -> float:
    lim = rig.cfg.limits
    return lim.max_current_ua / lim.ramp_up_s * rig.tick_s


# --------------------------------------------------------------------------------------------
# regulation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [100.0, 200.0, 400.0])
@pytest.mark.parametrize("load", [500.0, 2000.0, 10000.0, "normal"])
def test_regulates_to_target(rig, load, target):
    assert rig.post()["passed"]
    set_load(rig, load)
    rig.loop.start(SPEC, target)
    assert leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    leased(rig, 0.3)
    log = record(rig)
    leased(rig, 0.4)
    assert rig.loop.state == OutputState.ON and not rig.guard.tripped
    # Settled phase samples: the command has had the same polarity for 3 ticks before.
    samples = []
    for k in range(3, len(log)):
        cmds = [row[3] for row in log[k - 3 : k + 1]]
        if all(c > 0 for c in cmds) or all(c < 0 for c in cmds):
            samples.append(abs(log[k][4]))
    assert len(samples) > 0.8 * len(log)
    mean = sum(samples) / len(samples)
    tol = max(0.02 * target, 5.0)
    assert abs(mean - target) <= tol, f"mean {mean:.2f} uA for {target} uA"
    # What the loop reports agrees with the truth.
    assert abs(rig.loop.snapshot.measured_ua - target) <= tol
    # Peak stays well inside the setpoint tolerance.
    assert max(samples) <= target * 1.2 + 25


@pytest.mark.parametrize("ohm", [2000.0, 10000.0])
def test_impedance_estimate_matches_a_resistor(rig, ohm):
    assert rig.post()["passed"]
    set_load(rig, ohm)
    rig.loop.start(SPEC, 200.0)
    assert leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    leased(rig, 0.3)
    z = rig.loop.snapshot.impedance_ohm
    assert z is not None and z == pytest.approx(ohm, rel=0.05)
    assert rig.loop.snapshot.contact


# --------------------------------------------------------------------------------------------
# ramps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [40.0, 200.0, 400.0])
def test_start_ramps_from_zero(rig, target):
    assert rig.post()["passed"]
    log = record(rig)
    t0 = rig.clock.now()
    rig.loop.start(SPEC, target)
    assert leased_until(rig, lambda: rig.loop.state == OutputState.ON, 5.0)
    lim = rig.cfg.limits
    slew = slew_per_tick(rig)
    amps = [row[2] for row in log]
    assert amps[0] <= slew + 1e-9
    for k, row in enumerate(log[:20]):
        # The first ticks' command and current are small (trim/correction within 15 %).
        # Plus the stuck-channel dither (DITHER_CODES, ~2 uA, alternating every tick).
        codes = 2 + DITHER_CODES
        assert (
            abs(row[6])
            <= (k + 1) * slew * 1.15 + codes * rig.cfg.hardware.front_end.dac_ua_per_code
        )
        assert abs(row[4]) <= (k + 1) * slew * 1.15 + 5.0
    steps = [b - a for a, b in zip(amps, amps[1:], strict=False)]
    assert max(steps) <= slew + 1e-9
    t_on = next(row[0] for row in log if row[2] >= target)
    assert t_on - t0 >= lim.ramp_up_s * target / lim.max_current_ua - rig.tick_s - 1e-9


def test_every_start_ramps_from_zero_again(running_rig):
    rig = running_rig
    rig.loop.stop()
    assert leased_until(rig, lambda: rig.loop.state == OutputState.OFF, 2.0)
    log = record(rig)
    rig.loop.start(SPEC, 300.0)
    leased(rig, 0.05)
    assert rig.loop.state == OutputState.RAMP_UP
    assert log[0][2] <= slew_per_tick(rig) + 1e-9
    assert max(abs(row[4]) for row in log) <= 0.05 / rig.tick_s * slew_per_tick(rig) * 1.15 + 5


def test_rig_start_runs_through_the_ramp(rig):
    """The harness's own start() keeps the lease alive through a ramp longer than the lease."""
    assert rig.post()["passed"]
    rig.start(300.0)
    assert not rig.guard.tripped, rig.guard.fault
    assert rig.loop.state == OutputState.ON


@pytest.mark.parametrize(("first", "second"), [(200.0, 400.0), (400.0, 100.0), (100.0, 0.0)])
def test_set_target_slews_never_steps(rig, first, second):
    assert rig.post()["passed"]
    rig.loop.start(SPEC, first)
    assert leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    log = record(rig)
    rig.loop.set_target(second)
    assert leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    leased(rig, 0.05)
    amps = [row[2] for row in log]
    steps = [abs(b - a) for a, b in zip(amps, amps[1:], strict=False)]
    assert max(steps) <= slew_per_tick(rig) + 1e-9
    assert amps[-1] == second
    assert rig.loop.target_ua == second
    assert not rig.guard.tripped


@pytest.mark.parametrize(
    "bad", [-1.0, -0.001, 400.001, 1000.0, 1e9, math.nan, math.inf, -math.inf, True, None, "200"]
)
def test_set_target_and_start_refuse_bad_values(running_rig, bad):
    rig = running_rig
    before = (rig.loop.target_ua, len(rig.loop._cmds))
    with pytest.raises(CommandRefused):
        rig.loop.set_target(bad)
    assert (rig.loop.target_ua, len(rig.loop._cmds)) == before
    rig.loop.stop()
    assert leased_until(rig, lambda: rig.loop.state == OutputState.OFF, 2.0)
    with pytest.raises(CommandRefused):
        rig.loop.start(SPEC, bad)
    leased(rig, 0.01)
    assert rig.loop.state == OutputState.OFF and not rig.sim.enable_high


# --------------------------------------------------------------------------------------------
# stop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset_ticks", [0, 5, 13, 20, 31])
def test_stop_ramps_down_within_ramp_down_s(running_rig, offset_ticks):
    rig = running_rig
    leased(rig, offset_ticks * rig.tick_s)
    amp0 = rig.loop.amplitude_ua
    log = record(rig)
    t0 = rig.clock.now()
    rig.loop.stop()
    assert leased_until(rig, lambda: rig.loop.state == OutputState.OFF, 2.0)
    assert rig.clock.now() - t0 <= rig.cfg.limits.ramp_down_s + 2 * rig.tick_s
    assert not rig.sim.enable_high
    assert not rig.guard.tripped
    amps = [row[2] for row in log]
    assert all(b <= a + 1e-9 for a, b in zip(amps, amps[1:], strict=False))
    assert max(amps) <= amp0 * (1 + 1 / 1600) + 1e-9
    rig.run(0.002)
    assert rig.sim.current_ua == 0.0
    leased(rig, 0.1)
    assert rig.loop.state == OutputState.OFF and not rig.guard.tripped


def test_stop_of_a_program_waveform_ramps_and_closes_the_pair(rig):
    """A stop lasts at least ramp_down_s and, to close the open pair, at most two phase widths;
    the net charge left behind is a fraction of one phase's charge."""
    assert rig.post()["passed"]
    rig.loop.start(WaveformSpec(0.5, 500.0), 300.0)
    assert leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    # Stop at the end of the next first phase (the largest open charge).
    assert leased_until(rig, lambda: rig.loop.wave.t == rig.loop.wave.phase_ticks - 1, 3.0)
    q0 = rig.sim.plant.q_net_uc
    t0 = rig.clock.now()
    rig.loop.stop()
    assert leased_until(rig, lambda: rig.loop.state == OutputState.OFF, 3.0)
    took = rig.clock.now() - t0
    assert took >= rig.cfg.limits.ramp_down_s - rig.tick_s, f"the stop took {took:.3f} s"
    assert took <= 2 * 0.5 + 2 * rig.tick_s, f"the stop took {took:.3f} s"
    phase_uc = 300.0 * 0.5
    net_after = abs(rig.sim.plant.q_net_uc - q0 + phase_uc)  # the open phase was +/-150 uC
    assert min(net_after, abs(rig.sim.plant.q_net_uc - q0 - phase_uc)) < 0.05 * phase_uc


def test_stop_while_lifted_is_immediate(running_rig):
    rig = running_rig
    rig.sim.inject("lift_off")
    assert leased_until(rig, lambda: rig.loop.state == OutputState.LIFTED, 0.05)
    rig.loop.stop()
    rig.step()
    assert rig.loop.state == OutputState.OFF
    assert not rig.sim.enable_high and not rig.guard.tripped


# --------------------------------------------------------------------------------------------
# levels
# --------------------------------------------------------------------------------------------


def test_levels_map_evenly(rig):
    lim = rig.cfg.limits
    n = lim.level_count
    values = [level_to_ua(k, lim) for k in range(1, n + 1)]
    assert values[0] == pytest.approx(lim.level_min_ua)
    assert values[-1] == pytest.approx(lim.level_max_ua)
    step = (lim.level_max_ua - lim.level_min_ua) / (n - 1)
    for a, b in zip(values, values[1:], strict=False):
        assert b - a == pytest.approx(step)
    assert all(v <= lim.max_current_ua for v in values)


@pytest.mark.parametrize("bad", [0, -1, 11, 100, True, False, 1.0, 5.0, 2.5, None, "3"])
def test_levels_refuse_bad_values(rig, bad):
    with pytest.raises(LevelError):
        level_to_ua(bad, rig.cfg.limits)


def test_level_cap(rig):
    lim = rig.cfg.limits
    for cap in (1, 4, 8):
        for k in range(1, cap + 1):
            assert level_to_ua(k, lim, cap_level=cap) == level_to_ua(k, lim)
        with pytest.raises(LevelError):
            level_to_ua(cap + 1, lim, cap_level=cap)
    # A cap above the count does not extend the scale.
    with pytest.raises(LevelError):
        level_to_ua(lim.level_count + 1, lim, cap_level=lim.level_count + 5)
    with pytest.raises(LevelError):
        level_to_ua(1, lim, cap_level=0)


def test_levels_never_exceed_max_current(rig):
    lim = rig.cfg.limits.model_copy(update={"level_max_ua": 900.0, "max_current_ua": 300.0})
    assert max(level_to_ua(k, lim) for k in range(1, lim.level_count + 1)) == 300.0


def test_every_level_is_accepted_by_the_loop(running_rig):
    rig = running_rig
    lim = rig.cfg.limits
    for k in range(1, lim.level_count + 1):
        rig.loop.set_target(level_to_ua(k, lim))
    leased(rig, 0.01)
    assert rig.loop.target_ua == level_to_ua(lim.level_count, lim)


# --------------------------------------------------------------------------------------------
# contact
# --------------------------------------------------------------------------------------------


def test_dry_skin_lifts_rather_than_trips(rig):
    assert rig.post()["passed"]
    rig.sim.set_skin("dry")
    states = set()
    peak = [0.0]

    def cb(r):
        states.add(r.loop.state)
        peak[0] = max(peak[0], abs(r.sim.plant.i_load_ua))

    rig.on_tick = cb
    rig.loop.start(SPEC, 200.0)
    leased(rig, 2.0)
    assert not rig.guard.tripped, rig.guard.fault
    assert OutputState.LIFTED in states
    assert peak[0] <= 200.0 * 1.15 + 10
    assert any(e[1] == "contact_lost" for e in rig.loop.events)


def test_sweaty_skin_treats_normally(rig):
    assert rig.post()["passed"]
    rig.sim.set_skin("sweaty")
    rig.loop.start(SPEC, 300.0)
    assert leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    leased(rig, 0.5)
    assert rig.loop.state == OutputState.ON and not rig.guard.tripped


# --------------------------------------------------------------------------------------------
# charge balance
# --------------------------------------------------------------------------------------------


def _treatment_charge(rig, spec, target, seconds, load="normal") -> tuple[float, float]:
    assert rig.post()["passed"]
    set_load(rig, load)
    p = rig.sim.plant
    q0, a0 = p.q_net_uc, p.q_abs_uc  # the self-test's charge went into the test load
    rig.loop.start(spec, target)
    leased(rig, seconds)
    rig.loop.stop()
    assert leased_until(rig, lambda: rig.loop.state == OutputState.OFF, 3.0)
    assert not rig.guard.tripped, rig.guard.fault
    return p.q_net_uc - q0, p.q_abs_uc - a0


@pytest.mark.parametrize(
    ("spec", "target", "seconds", "load"),
    [
        (SPEC, 100.0, 3.0, "normal"),
        (SPEC, 400.0, 3.0, "normal"),
        (SPEC, 200.0, 3.0, 2000.0),
        (SPEC, 200.0, 3.13, "sweaty"),
        (WaveformSpec(10.0, 40.0), 200.0, 3.0, "normal"),  # demo
        (WaveformSpec(1.0, 250.0), 300.0, 4.5, "normal"),  # quick-tone
        (WaveformSpec(0.5, 500.0), 300.0, 3.0, "normal"),  # full-face lift
    ],
)
def test_treatment_net_dc_charge_is_under_one_percent(rig, spec, target, seconds, load):
    net, delivered = _treatment_charge(rig, spec, target, seconds, load)
    assert delivered > 0.3 * target * seconds * 0.5
    assert abs(net) < 0.01 * delivered, f"net {net:.3f} uC of {delivered:.1f} uC"


def test_reported_net_charge_tracks_the_truth(running_rig):
    rig = running_rig
    p = rig.sim.plant
    q_true0, q_loop0 = p.q_net_uc, rig.loop.q_net_uc
    a_true0, a_loop0 = p.q_abs_uc, rig.loop.q_abs_uc
    leased(rig, 1.0)
    assert rig.loop.q_abs_uc - a_loop0 == pytest.approx(p.q_abs_uc - a_true0, rel=0.02)
    assert abs((rig.loop.q_net_uc - q_loop0) - (p.q_net_uc - q_true0)) < 1.0


def test_waveform_change_takes_effect_at_a_pair_boundary(running_rig):
    rig = running_rig
    p = rig.sim.plant
    q0, a0 = p.q_net_uc, p.q_abs_uc
    rig.loop.set_waveform(WaveformSpec(10.0, 40.0))
    leased(rig, 1.0)
    assert rig.loop.wave.spec == WaveformSpec(10.0, 40.0)
    rig.loop.stop()
    assert leased_until(rig, lambda: rig.loop.state == OutputState.OFF, 2.0)
    assert not rig.guard.tripped
    assert abs(p.q_net_uc - q0) < 0.01 * (p.q_abs_uc - a0)


# --------------------------------------------------------------------------------------------
# lease
# --------------------------------------------------------------------------------------------


def test_lease_renewal_outside_output_is_ignored(rig):
    assert rig.post()["passed"]
    rig.loop.renew_lease()
    rig.step()
    assert rig.loop.lease_deadline is None
    rig.loop.start(SPEC, 100.0)
    rig.step()
    assert rig.loop.snapshot is not None
    rig.run(0.01)
    assert rig.loop.snapshot.lease_left_ms is not None
    assert 0 < rig.loop.snapshot.lease_left_ms <= rig.cfg.limits.lease_ms


def test_snapshot_is_published(running_rig):
    s = running_rig.loop.snapshot
    assert s.state == OutputState.ON
    assert s.target_ua == 200.0
    assert s.post_valid and s.fault is None
    assert s.charge_uc > 0 and s.active_s > 0
    assert 0.0 <= s.contact_quality_pct <= 100.0


def test_simrig_is_deterministic():
    def run_once():
        r = SimRig(seed=7)
        try:
            assert r.post()["passed"]
            r.loop.start(SPEC, 200.0)
            leased(r, 0.5)
            return (r.sim.plant.q_net_uc, r.sim.plant.q_abs_uc, r.loop.amplitude_ua)
        finally:
            r.close()

    assert run_once() == run_once()


# --------------------------------------------------------------------------------------------
# regressions found in review
# --------------------------------------------------------------------------------------------


def test_a_latched_fault_keeps_the_watchdog_health_view_alive(running_rig):
    """A fault must show on the screen, not make systemd restart the daemon: while latched the
    loop keeps ticking and sampling, so Supervisor.healthy() stays true."""
    rig = running_rig
    rig.loop.estop()
    rig.run(0.2)
    assert rig.loop.state == OutputState.TRIPPED
    assert rig.supervisor.healthy()
    assert abs(rig.loop.residual_ua) < rig.cfg.hardware.post.zero_tolerance_ua


def test_lift_off_during_a_stop_ends_it_and_never_resumes(rig):
    # Long phases make a big balancing tail (up to the full amplitude) that lift-off can see.
    assert rig.post()["passed"]
    rig.loop.start(WaveformSpec(0.5, 500.0), 300.0)
    assert rig.run_leased_until(lambda: rig.loop.state == OutputState.ON, 3.0)
    assert rig.run_leased_until(lambda: rig.loop.wave.t == rig.loop.wave.phase_ticks - 1, 3.0)
    rig.loop.stop()
    rig.run_leased(0.05)
    assert rig.loop.state == OutputState.RAMP_DOWN and rig.loop.amplitude_ua > 100
    rig.sim.inject("lift_off")
    assert rig.run_leased_until(lambda: rig.loop.state == OutputState.OFF, 0.05)
    rig.sim.clear("lift_off")
    peak = 0.0
    for _ in range(round(1.5 / rig.tick_s)):
        rig.loop.renew_lease()
        rig.step()
        peak = max(peak, abs(rig.sim.current_ua))
    assert rig.loop.state == OutputState.OFF and not rig.sim.enable_high
    assert peak < 1.0


def test_a_second_stop_does_not_repeat_the_balancing_tail(rig):
    assert rig.post()["passed"]
    rig.loop.start(WaveformSpec(0.5, 500.0), 300.0)
    assert rig.run_leased_until(lambda: rig.loop.state == OutputState.ON, 3.0)
    assert rig.run_leased_until(lambda: rig.loop.wave.t == rig.loop.wave.phase_ticks // 2, 3.0)
    q0 = rig.sim.plant.q_net_uc
    rig.loop.stop()
    rig.run_leased(0.1)
    rig.loop.stop()  # pressed again mid ramp-down
    assert rig.run_leased_until(lambda: rig.loop.state == OutputState.OFF, 3.0)
    open_phase_uc = 300.0 * 0.25  # half a 500 ms phase at 300 uA
    net = rig.sim.plant.q_net_uc - q0
    # Balanced: what was open when stop came in (+/- half a phase) is closed again.
    assert min(abs(net - open_phase_uc), abs(net + open_phase_uc)) < 0.05 * open_phase_uc
