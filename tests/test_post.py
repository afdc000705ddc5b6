"""The power-on self-test: passes on a healthy board, fails at the step that proves each fault."""

from __future__ import annotations

import pytest

from hw.loop import CommandRefused, OutputState
from hw.safety import Fault
from hw.waveform import WaveformSpec

STEPS = (
    "reference",
    "zero",
    "latch_rearm",
    "calibration",
    "latch_trip",
    "deadman",
    "relay",
)


def step_names(result: dict) -> list[str]:
    return [s["step"] for s in result["steps"]]


def assert_is_subsequence(needles, haystack) -> None:
    it = iter(haystack)
    missing = [n for n in needles if not any(n == h for h in it)]
    assert not missing, f"{missing} missing or out of order in {list(haystack)}"


def assert_post_left_it_safe(rig) -> None:
    assert not rig.sim.enable_high
    assert not rig.board.lines.test_load.value
    rig.run(0.002)
    assert not rig.sim.relay_closed or "welded_relay" in rig.sim.active_faults
    assert abs(rig.sim.current_ua) < 1.0


# --------------------------------------------------------------------------------------------
# healthy board
# --------------------------------------------------------------------------------------------


def test_post_passes_on_a_healthy_board(rig):
    assert not rig.guard.post_valid
    t0 = rig.clock.now()
    result = rig.post()
    assert result is not None and result["passed"], result
    assert "failed_step" not in result
    assert_is_subsequence(STEPS, step_names(result))
    assert rig.guard.post_valid
    assert not rig.guard.tripped
    assert rig.loop.state == OutputState.OFF
    assert rig.clock.now() - t0 < 0.2
    assert not rig.board.lines.latch_pin.state  # the hardware latch is armed
    assert any(e[1] == "post" and e[2]["passed"] for e in rig.loop.events)
    assert_post_left_it_safe(rig)


def test_post_calibration_matches_the_stage(rig):
    result = rig.post()
    assert result["passed"]
    plant = rig.sim.plant
    # The stage's true gain (1.03) and offset (3 uA) differ from nominal: the self-test finds them.
    assert rig.loop.cal_gain == pytest.approx(plant.stage_gain, abs=0.01)
    assert rig.loop.cal_offset_ua == pytest.approx(plant.stage_offset_ua, abs=1.0)
    assert rig.loop.adc_offset_codes == pytest.approx(plant.adc_offset_codes, abs=0.5)
    cal = next(s for s in result["steps"] if s["step"] == "calibration")
    check = rig.cfg.hardware.post.check_current_ua
    assert cal["plus_ua"] == pytest.approx(check, abs=check * 0.05)
    assert cal["minus_ua"] == pytest.approx(-check, abs=check * 0.05)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_post_passes_for_other_noise_seeds(seed):
    from hw.sim.rig import SimRig

    rig = SimRig(seed=seed)
    try:
        assert rig.post()["passed"]
    finally:
        rig.close()


def test_post_only_ever_drives_the_internal_test_load(rig):
    """Whenever the relay is closed during the self-test the test load is selected."""
    bad = []

    def watch(r):
        p = r.sim.plant
        if p.relay_closed and not p.test_load_selected:
            bad.append((r.clock.now(), p.i_load_ua))

    rig.on_tick = watch
    assert rig.post()["passed"]
    assert bad == []


def test_no_output_before_post(rig):
    for target in (40.0, 200.0):
        with pytest.raises(CommandRefused):
            rig.loop.start(WaveformSpec(50.0, 10.0), target)
    rig.run(0.05)
    assert rig.loop.state == OutputState.OFF
    assert not rig.sim.enable_high
    assert rig.post()["passed"]
    rig.loop.start(WaveformSpec(50.0, 10.0), 40.0)
    rig.step()
    assert rig.loop.state == OutputState.RAMP_UP
    assert rig.sim.enable_high


def test_post_refused_while_output_is_on(running_rig):
    with pytest.raises(CommandRefused):
        running_rig.loop.run_post()
    running_rig.keep_lease(0.05)
    assert running_rig.loop.state == OutputState.ON


def test_post_refused_while_a_fault_is_latched(rig):
    rig.guard.trip(Fault.RAIL, "test")
    rig.step()
    with pytest.raises(CommandRefused):
        rig.loop.run_post()
    assert rig.loop.state == OutputState.TRIPPED


# --------------------------------------------------------------------------------------------
# each fault, injected before the self-test
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "step"),
    [
        ("adc_reference", "reference"),
        ("rail_low", "reference"),
        ("shorted_shunt", "calibration"),  # +200 uA driven, 0 read back
        ("open_circuit", "calibration"),
        ("overcurrent", "calibration"),  # the stage at its rail: the latch cuts, 0 read back
        ("adc_stuck", "reference"),  # every channel frozen at the last (boot-time) code
        ("dac_stuck", "latch_rearm"),  # the threshold write to DAC B is ignored: no re-arm
        # The latch, the dead-man and the relay all cut through the relay contacts, so a relay
        # welded before the test is caught at the first of them, the latch test.
        ("welded_relay", "latch_trip"),
        # The simulated dead comparator cannot re-arm either (its latch stays set from
        # power-up), so it fails at the first re-arm.
        ("dead_comparator", "latch_rearm"),
    ],
)
def test_post_fails_at_the_step_that_proves_the_fault(rig, fault, step):
    rig.sim.inject(fault)
    result = rig.post()
    assert result is not None and not result["passed"]
    assert result["failed_step"] == step, result
    assert result["reason"]
    assert rig.guard.fault.code == Fault.POST_FAILED
    assert step in rig.guard.fault.detail
    assert not rig.guard.post_valid
    assert rig.loop.state == OutputState.TRIPPED
    with pytest.raises(CommandRefused):
        rig.loop.start(WaveformSpec(50.0, 10.0), 100.0)
    assert_post_left_it_safe(rig)


def test_post_with_spi_error_trips_spi_error(rig):
    rig.sim.inject("spi_error")
    result = rig.post()
    assert result is None
    assert rig.guard.fault.code == Fault.SPI_ERROR
    assert not rig.guard.post_valid
    assert rig.loop.state == OutputState.TRIPPED
    assert_post_left_it_safe(rig)


@pytest.mark.parametrize("fault", ["estop"])
def test_post_with_estop_pressed_trips_estop(rig, fault):
    rig.sim.inject(fault)
    rig.loop.run_post()
    rig.run(0.1)
    assert rig.guard.fault.code == Fault.ESTOP
    assert not rig.guard.post_valid
    assert_post_left_it_safe(rig)


@pytest.mark.parametrize("fault", ["lift_off", "charger"])
def test_faults_outside_the_test_path_do_not_fail_post(rig, fault):
    """The self-test drives only the internal load; the electrodes and charger do not matter
    (start is refused with a charger anyway)."""
    rig.sim.inject(fault)
    assert rig.post()["passed"]
    if fault == "charger":
        with pytest.raises(CommandRefused):
            rig.loop.start(WaveformSpec(50.0, 10.0), 100.0)


# --------------------------------------------------------------------------------------------
# a fault that appears half-way: the later steps catch it
# --------------------------------------------------------------------------------------------


def _inject_after(rig, fault: str, kind: str, value: bool) -> None:
    """Inject ``fault`` on the first tick after the board saw a ``kind`` event with ``value``."""

    def watch(r):
        if fault in r.sim.active_faults:
            return
        if any(e[1] == kind and e[2] is value for e in r.sim.events):
            r.sim.inject(fault)

    rig.on_tick = watch


@pytest.mark.parametrize(
    ("fault", "kind", "value", "step"),
    [
        # welded after the dead-man test (/SHDN test running): only the relay step can see it
        ("welded_relay", "dac_shdn", False, "relay"),
        # comparator dies once the latch has been re-armed: the latch test must see it
        ("dead_comparator", "latch", False, "latch_trip"),
    ],
)
def test_fault_appearing_during_post_fails_its_step(rig, fault, kind, value, step):
    _inject_after(rig, fault, kind, value)
    result = rig.post()
    assert fault in rig.sim.active_faults
    assert result is not None and not result["passed"]
    assert result["failed_step"] == step, result
    assert rig.guard.fault.code == Fault.POST_FAILED
    assert not rig.sim.enable_high


def test_estop_during_post_aborts_it_safely(rig):
    _inject_after(rig, "estop", "relay", True)  # once the test current flows
    rig.loop.run_post()
    rig.run(0.2)
    assert rig.guard.fault.code == Fault.ESTOP
    assert not rig.guard.post_valid
    assert rig.loop.state == OutputState.TRIPPED
    assert_post_left_it_safe(rig)


def test_loop_stall_during_post_trips(rig):
    rig.loop.run_post()
    rig.run(0.01)
    assert rig.loop.state == OutputState.POST
    rig.loop_stalled = True
    rig.run(0.03)
    assert rig.guard.fault.code == Fault.LOOP_STALL
    assert not rig.guard.post_valid
    assert not rig.sim.enable_high
    rig.loop_stalled = False
    rig.step()
    assert rig.loop.state == OutputState.TRIPPED
    assert_post_left_it_safe(rig)


def test_post_passes_again_once_the_fault_is_repaired(rig):
    rig.sim.inject("shorted_shunt")
    assert not rig.post()["passed"]
    rig.sim.clear("shorted_shunt")
    rig.loop.acknowledge()
    rig.step()
    result = rig.post()
    assert result["passed"], result
    assert rig.guard.post_valid
    rig.loop.start(WaveformSpec(50.0, 10.0), 40.0)
    rig.step()
    assert rig.loop.state == OutputState.RAMP_UP
