"""Every single fault, injected into a running treatment: it must cut the output in time and latch.

Latencies are measured on the board's own clock, from the injection to the moment the simulated
board saw the output safe (``SimBoard.output_cut_at``: enable low and DAC A at zero).
"""

from __future__ import annotations

import threading
import time

import pytest

from hw.control.loop import DRIVING, CommandRefused, OutputState
from hw.control.waveform import WaveformSpec
from hw.hal.sim.board import FAULTS
from hw.hal.sim.plant import Load
from hw.safety import NEEDS_POST, Fault

TICK_MS = 0.5
EPS_MS = 1e-6

# Per fault that trips during a run: the Fault codes the loop can raise for it (read from
# hw/control/loop.py) and the design bound (ms) from injection to output cut.
RUN_TRIPS: dict[str, tuple[frozenset[Fault], float]] = {
    # The stage fails to its rail: the next sample reads far above the limit (or off the ADC's
    # scale). One tick.
    "overcurrent": (
        frozenset({Fault.OVERCURRENT, Fault.ADC_SATURATED, Fault.HW_OVERCURRENT}),
        0.5,
    ),
    # Any transfer fails -> SpiFault out of the tick -> SPI_ERROR. One tick.
    "spi_error": (frozenset({Fault.SPI_ERROR}), 0.5),
    # Inputs read at the top of every tick.
    "estop": (frozenset({Fault.ESTOP}), 0.5),
    "charger": (frozenset({Fault.CHARGER}), 0.5),
    # A broken wire of either interlock reads as pressed / charger present (fail-safe), and the
    # open chain drops the relay in hardware too.
    "estop_wire_broken": (frozenset({Fault.ESTOP}), 0.5),
    "charger_wire_broken": (frozenset({Fault.CHARGER}), 0.5),
    # Current stops following while the electrode voltage is not at compliance:
    # follow_debounce_ms (8) of samples.
    "open_circuit": (frozenset({Fault.OPEN_CIRCUIT}), 20.0),
    # The shunt reads zero while the voltage says current flows: the same check.
    "shorted_shunt": (frozenset({Fault.OPEN_CIRCUIT}), 20.0),
    # The rail is sampled every other tick and trips on the 3rd bad sample: 6 ticks.
    "rail_low": (frozenset({Fault.RAIL}), 3.0),
    # The reference is sampled every other tick and trips on the 2nd bad sample: 4 ticks.
    "adc_reference": (frozenset({Fault.ADC_REFERENCE}), 2.0),
    # The stage keeps the frozen command; the next phase edge makes the measured current
    # disagree with the command (too high / wrong polarity -> setpoint check, too low ->
    # follow check). Worst case: frozen at the start of a phase whose polarity the next phase
    # repeats (pair boundary): two 10 ms phases, then the 1 ms setpoint debounce.
    "dac_stuck": (frozenset({Fault.OVERCURRENT_SETPOINT, Fault.OPEN_CIRCUIT}), 21.5),
    # The current channel alone repeats its code: the dithered command moves a live channel
    # every tick, so FROZEN_TICKS (16) identical samples trip; a phase edge may trip first.
    "adc_current_stuck": (
        frozenset({Fault.ADC_STUCK, Fault.OVERCURRENT_SETPOINT, Fault.OPEN_CIRCUIT}),
        8.5,
    ),
}
POST_ONLY = ("welded_relay", "dead_comparator", "estop_bridged", "charger_bridged")
NOT_A_TRIP = ("lift_off",)
OFFSETS = (0, 7, 20, 33)  # ticks into the 40-tick (50 Hz) period before the fault is injected


def test_every_simulated_fault_is_covered_here():
    covered = set(RUN_TRIPS) | set(POST_ONLY) | set(NOT_A_TRIP) | {"adc_stuck"}
    assert covered == set(FAULTS)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def run_leased(rig, seconds: float) -> None:
    rig.run_leased(seconds)


def run_leased_until(rig, pred, timeout_s: float) -> bool:
    return rig.run_leased_until(pred, timeout_s)


def cut_latency_ms(rig, t_inj: float) -> float:
    cut = rig.sim.output_cut_at()
    assert cut is not None, "the output is not cut (enable high or DAC A not at zero)"
    return (cut - t_inj) * 1000.0


def enable_low_after(rig, t: float) -> float | None:
    """Board time of the first enable falling edge at or after ``t``."""
    for ts, kind, value in rig.sim.events:
        if kind == "enable" and value is False and ts >= t - 1e-12:
            return ts
    return None


def assert_safe(rig) -> None:
    """Output enable low, DAC A commanding zero, and (after the relay releases) no current."""
    assert not rig.sim.enable_high
    assert not rig.board.lines.output_enable.value
    assert rig.sim.plant.i_command_ua == 0.0
    rig.run(0.002)  # relay release time (0.5 ms) and the stage's lag
    assert abs(rig.sim.current_ua) < 1.0
    assert not rig.sim.relay_closed


def watch_enable_while_tripped(rig) -> list[float]:
    """Record every tick where the enable line is high while a fault is latched."""
    bad: list[float] = []

    def check(r):
        if r.guard.tripped and r.sim.enable_high:
            bad.append(r.clock.now())

    rig.on_tick = check
    return bad


def acknowledge_needs_post(rig, code: Fault) -> None:
    """After the cause is gone: acknowledge is accepted; start stays refused until a new POST
    passes (the trip invalidated it and tripped the hardware latch); then output starts."""
    if code in NEEDS_POST:
        assert not rig.guard.post_valid
    rig.loop.acknowledge()
    assert not rig.guard.tripped  # cleared at once, on the calling thread
    rig.step()
    assert rig.loop.state == OutputState.OFF
    assert not rig.sim.enable_high
    with pytest.raises(CommandRefused):
        rig.loop.start(WaveformSpec(50.0, 10.0), 200.0)
    assert rig.loop.start_blocker() is not None
    rig.run(0.01)
    assert not rig.sim.enable_high and not rig.guard.tripped
    # A passing self-test re-arms everything: the output can start again.
    result = rig.post()
    assert result is not None and result["passed"], result
    rig.loop.start(WaveformSpec(50.0, 10.0), 100.0)
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.ON, 2.0)
    assert not rig.guard.tripped


# --------------------------------------------------------------------------------------------
# single faults during a run: detection, code, latency, safe state
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("fault", sorted(RUN_TRIPS))
def test_fault_during_run_trips_in_time(running_rig, fault, offset):
    rig = running_rig
    codes, bound_ms = RUN_TRIPS[fault]
    run_leased(rig, offset * rig.tick_s)
    t_inj = rig.clock.now()
    rig.sim.inject(fault)
    assert run_leased_until(rig, lambda: rig.guard.tripped, bound_ms / 1000.0 + 0.01), (
        f"{fault} did not trip"
    )
    assert rig.guard.fault.code in codes, rig.guard.fault
    assert cut_latency_ms(rig, t_inj) <= bound_ms + EPS_MS
    assert rig.loop.state == OutputState.TRIPPED
    assert_safe(rig)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("frozen", ["reference", "rail"])
def test_adc_stuck_during_run_trips_in_time(running_rig, frozen, offset):
    """Every channel freezes at the code last converted, which is the aux channel of the tick
    before: the reference code (~3103) reads as +640 uA -> OVERCURRENT on the next tick; the
    rail code (~1536) reads as -310 uA -> OVERCURRENT_SETPOINT after its 1 ms debounce."""
    rig = running_rig
    run_leased(rig, offset * rig.tick_s)
    # _aux_i == 1: the reference channel was converted last in the tick just run.
    want_ref = frozen == "reference"
    if (rig.loop._aux_i == 1) != want_ref:
        run_leased(rig, rig.tick_s)
    assert (rig.loop._aux_i == 1) == want_ref
    t_inj = rig.clock.now()
    rig.sim.inject("adc_stuck")
    assert run_leased_until(rig, lambda: rig.guard.tripped, 0.02)
    expected = Fault.OVERCURRENT if want_ref else Fault.OVERCURRENT_SETPOINT
    assert rig.guard.fault.code == expected
    assert cut_latency_ms(rig, t_inj) <= 10.0 + EPS_MS
    assert_safe(rig)


@pytest.mark.parametrize("offset", OFFSETS)
def test_lift_off_is_not_a_trip_but_cuts_within_20ms(running_rig, offset):
    rig = running_rig
    run_leased(rig, offset * rig.tick_s)
    t_inj = rig.clock.now()
    rig.sim.inject("lift_off")
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.LIFTED, 0.02)
    assert not rig.guard.tripped
    # The current drops through the DAC; the relay stays closed (probing never cycles it).
    assert enable_low_after(rig, t_inj) is None
    assert rig.sim.enable_high and rig.sim.relay_closed
    # DAC A is told zero true current (the loop writes its calibrated zero code).
    assert abs(rig.sim.plant.dac_target_ua) < 1.0
    assert rig.sim.t_dac_zero is not None and (rig.sim.t_dac_zero - t_inj) * 1000.0 <= 20.0
    rig.run(0.002)
    assert rig.sim.current_ua == 0.0


def test_loop_stall_trips_within_20ms(running_rig):
    rig = running_rig
    t0 = rig.clock.now()
    rig.loop_stalled = True
    rig.run(0.03)
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.LOOP_STALL
    assert cut_latency_ms(rig, t0) <= 20.0 + EPS_MS
    rig.loop_stalled = False
    rig.step()
    assert rig.loop.state == OutputState.TRIPPED
    assert_safe(rig)


def test_lease_expiry_cuts_within_lease_plus_one_tick(running_rig):
    rig = running_rig
    rig.loop.renew_lease()
    rig.step()  # the renewal applies in this tick
    t_renew = rig.clock.now()
    lease_ms = rig.cfg.limits.lease_ms
    rig.run(lease_ms / 1000.0 + 0.01)
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.LEASE_EXPIRED
    assert cut_latency_ms(rig, t_renew) <= lease_ms + TICK_MS + EPS_MS
    assert cut_latency_ms(rig, t_renew) >= lease_ms - EPS_MS  # not before the lease ran out
    assert_safe(rig)


def test_a_renewed_lease_never_expires(running_rig):
    rig = running_rig
    rig.keep_lease(2.0)
    assert not rig.guard.tripped and rig.loop.state == OutputState.ON


def test_on_screen_estop_cuts_at_once(running_rig):
    rig = running_rig
    t0 = rig.clock.now()
    rig.loop.estop()
    # Synchronous on the calling thread: cut before the next tick.
    assert rig.guard.fault.code == Fault.ESTOP
    assert cut_latency_ms(rig, t0) <= 0.5 + EPS_MS
    rig.step()
    assert rig.loop.state == OutputState.TRIPPED
    assert_safe(rig)


def test_deadman_opens_the_relay_when_everything_freezes(running_rig):
    rig = running_rig
    t0 = rig.clock.now()
    rig.all_stalled = True
    rig.run(0.05)
    # Nothing in software ran: only the monostable could open the relay.
    assert not rig.guard.tripped
    assert rig.sim.enable_high
    assert not rig.sim.relay_closed
    bound_ms = rig.cfg.hardware.front_end.deadman_ms + rig.sim.plant.relay_release_s * 1000.0
    assert (rig.sim.t_relay_open - t0) * 1000.0 <= bound_ms + EPS_MS
    assert rig.sim.current_ua == 0.0
    # When the process wakes up, the loop sees the gap and trips.
    rig.all_stalled = False
    rig.step()
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.LOOP_STALL
    assert_safe(rig)


# --------------------------------------------------------------------------------------------
# limits that trip
# --------------------------------------------------------------------------------------------


def _with_limits(rig_cls, **limits):
    from hw.config import load_config

    cfg = load_config(env={})
    return rig_cls(cfg=cfg.model_copy(update={"limits": cfg.limits.model_copy(update=limits)}))


def test_output_time_limit_trips():
    from hw.hal.sim.rig import SimRig

    rig = SimRig(seed=1)
    try:
        assert rig.post()["passed"]
        rig.loop.start(WaveformSpec(50.0, 10.0), 200.0, max_output_s=0.25)
        run_leased(rig, 0.5)
        assert rig.guard.fault is not None and rig.guard.fault.code == Fault.OUTPUT_TIME
        assert abs(rig.loop.active_s - 0.25) <= 2 * rig.tick_s
        assert_safe(rig)
    finally:
        rig.close()


def test_max_output_s_can_only_lower_the_limit(rig):
    assert rig.post()["passed"]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(CommandRefused):
            rig.loop.start(WaveformSpec(50.0, 10.0), 100.0, max_output_s=bad)
    rig.loop.start(WaveformSpec(50.0, 10.0), 100.0, max_output_s=1e9)
    rig.step()
    assert rig.loop.max_output_s == rig.cfg.limits.max_output_s


def test_net_charge_limit_trips():
    from hw.hal.sim.rig import SimRig

    # 40 ms phases at 200 uA carry 8 uC each: above a 5 uC limit half-way through a phase.
    rig = _with_limits(SimRig, max_net_charge_uc=5.0)
    try:
        assert rig.post()["passed"]
        rig.loop.start(WaveformSpec(10.0, 40.0), 200.0)
        run_leased_until(rig, lambda: rig.guard.tripped, 3.0)
        assert rig.guard.fault is not None and rig.guard.fault.code == Fault.NET_CHARGE
        assert abs(rig.loop.q_net_uc) <= 5.0 + 200.0 * rig.tick_s + 1e-9
        assert_safe(rig)
    finally:
        rig.close()


def _short_electrodes(rig, ohm: float, target: float) -> float:
    """Run at ``target``, then let the electrodes touch; returns ms until the cut (or inf)."""
    rig.loop.set_target(target)
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    run_leased(rig, 0.05)
    t0 = rig.clock.now()
    rig.sim.set_load(Load.resistor(ohm))
    if not run_leased_until(rig, lambda: rig.guard.tripped, 0.2):
        return float("inf")
    assert rig.guard.fault.code == Fault.IMPEDANCE_LOW
    assert_safe(rig)
    return cut_latency_ms(rig, t0)


# impedance_debounce_ms (10) of settled samples; the 1-2 ticks after each phase edge are not
# settled, so 20 settled samples take at most ~12 ms. Twice the debounce is generous.
SHORT_BOUND_MS = 20.0


@pytest.mark.parametrize(
    ("ohm", "target"), [(0.0, 200.0), (0.0, 400.0), (10.0, 200.0), (50.0, 400.0)]
)
def test_electrodes_touching_trips_impedance_low(running_rig, ohm, target):
    assert _short_electrodes(running_rig, ohm, target) <= SHORT_BOUND_MS


@pytest.mark.parametrize(("ohm", "target"), [(100.0, 100.0), (100.0, 200.0), (0.0, 100.0)])
def test_electrodes_touching_at_low_levels_trips_impedance_low(running_rig, ohm, target):
    assert _short_electrodes(running_rig, ohm, target) <= SHORT_BOUND_MS


# --------------------------------------------------------------------------------------------
# the latch holds; acknowledge; new POST
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", sorted(RUN_TRIPS) + ["adc_stuck"])
def test_latch_holds_until_acknowledged_then_needs_post(running_rig, fault):
    rig = running_rig
    bad = watch_enable_while_tripped(rig)
    rig.sim.inject(fault)
    assert run_leased_until(rig, lambda: rig.guard.tripped, 0.05)
    code = rig.guard.fault.code
    # The cause goes away, the kiosk keeps renewing and asking: nothing restarts the output.
    rig.sim.clear(fault)
    run_leased(rig, 0.05)
    for attempt in (
        lambda: rig.loop.start(WaveformSpec(50.0, 10.0), 200.0),
        rig.loop.run_post,
    ):
        with pytest.raises(CommandRefused):
            attempt()
    rig.loop.set_target(300.0)  # accepted for the queue, ignored while tripped
    run_leased(rig, 0.05)
    assert rig.guard.tripped and rig.guard.fault.code == code
    assert rig.loop.state == OutputState.TRIPPED
    assert not rig.sim.enable_high
    assert bad == []
    acknowledge_needs_post(rig, code)


@pytest.mark.parametrize(("fault", "code"), [("estop", Fault.ESTOP), ("charger", Fault.CHARGER)])
def test_acknowledge_is_refused_while_the_cause_persists(running_rig, fault, code):
    rig = running_rig
    rig.sim.inject(fault)
    run_leased(rig, 0.01)
    assert rig.guard.fault.code == code
    for _ in range(3):
        with pytest.raises(CommandRefused):
            rig.loop.acknowledge()
        run_leased(rig, 0.01)
        assert rig.guard.tripped and rig.loop.state == OutputState.TRIPPED
    rig.sim.clear(fault)
    rig.step()
    acknowledge_needs_post(rig, code)


def test_estop_held_blocks_start_and_post_even_after_acknowledge(rig):
    assert rig.post()["passed"]
    rig.sim.inject("estop")
    rig.run(0.005)
    assert rig.guard.fault.code == Fault.ESTOP  # the e-stop trips even with the output off
    with pytest.raises(CommandRefused):
        rig.loop.acknowledge()
    rig.sim.clear("estop")
    rig.loop.acknowledge()
    rig.step()
    assert not rig.guard.tripped


@pytest.mark.parametrize("how", ["loop_stall", "lease", "on_screen_estop"])
def test_latch_holds_for_software_faults(running_rig, how):
    rig = running_rig
    bad = watch_enable_while_tripped(rig)
    if how == "loop_stall":
        rig.loop_stalled = True
        rig.run(0.03)
        rig.loop_stalled = False
        want = Fault.LOOP_STALL
    elif how == "lease":
        rig.run(0.5)
        want = Fault.LEASE_EXPIRED
    else:
        rig.loop.estop()
        want = Fault.ESTOP
    run_leased(rig, 0.05)
    assert rig.guard.fault is not None and rig.guard.fault.code == want
    with pytest.raises(CommandRefused):
        rig.loop.start(WaveformSpec(50.0, 10.0), 200.0)
    assert bad == []
    acknowledge_needs_post(rig, want)


def _trip_while_running(rig, how: str) -> Fault:
    if how == "on_screen_estop":
        rig.loop.estop()
    elif how == "lease":
        rig.run(0.5)
    else:
        rig.sim.inject(how)
        run_leased(rig, 0.03)
        rig.sim.clear(how)
    run_leased(rig, 0.01)
    assert rig.guard.tripped
    return rig.guard.fault.code


@pytest.mark.parametrize("how", ["on_screen_estop", "lease", "rail_low", "charger"])
def test_after_acknowledge_and_post_the_output_can_start_again(running_rig, how):
    """Regression: _cmd_prev2 used to survive a trip, so the frozen-ADC check fired a spurious
    ADC_STUCK once the loop idled OFF after acknowledge (and on every later acknowledge)."""
    rig = running_rig
    _trip_while_running(rig, how)
    rig.loop.acknowledge()
    rig.step()
    assert rig.loop.state == OutputState.OFF
    result = rig.post()
    assert result is not None and result["passed"], result
    rig.run(0.5)  # the kiosk shows the ready screen for a moment
    assert rig.guard.fault is None, rig.guard.fault
    assert rig.loop.state == OutputState.OFF
    rig.loop.start(WaveformSpec(50.0, 10.0), 100.0)
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.ON, 2.0)
    assert not rig.guard.tripped


def test_idle_after_acknowledge_stays_fault_free_when_the_trip_came_from_idle(rig):
    """Control for the test above: a trip with the output off (no drive command in the loop's
    history), acknowledged, then POST: the device idles without a spurious fault and starts."""
    assert rig.post()["passed"]
    rig.loop.estop()
    rig.step()
    rig.loop.acknowledge()
    rig.step()
    assert rig.post()["passed"]
    rig.run(0.5)
    assert rig.guard.fault is None
    rig.loop.start(WaveformSpec(50.0, 10.0), 100.0)
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.ON, 2.0)


def test_acknowledge_is_refused_during_post(rig):
    rig.loop.run_post()
    rig.step()
    assert rig.loop.state == OutputState.POST
    with pytest.raises(CommandRefused):
        rig.loop.acknowledge()
    rig.run_until(lambda: rig.loop.state != OutputState.POST, 1.0)
    assert rig.guard.post_valid


def test_trip_is_idempotent_and_keeps_the_first_reason(running_rig):
    rig = running_rig
    first = rig.guard.trip(Fault.RAIL, "first")
    second = rig.guard.trip(Fault.ESTOP, "second")
    assert rig.guard.fault.code == Fault.RAIL
    assert second is first and second.detail == "first"
    assert rig.guard.trip_count == 2
    rig.step()
    faults = [e for e in rig.loop.events if e[1] == "fault"]
    assert len(faults) == 1 and faults[0][2]["code"] == "RAIL"
    rig.guard.trip(Fault.OVERCURRENT)
    assert rig.guard.trip_count == 3 and rig.guard.fault.code == Fault.RAIL
    assert_safe(rig)


def test_trip_from_another_thread_while_the_loop_runs(running_rig):
    rig = running_rig
    bad = watch_enable_while_tripped(rig)
    go = threading.Event()
    done = threading.Event()

    def ui_thread():
        go.wait()
        time.sleep(0.003)
        rig.loop.estop("from the UI thread")
        done.set()

    th = threading.Thread(target=ui_thread)
    th.start()
    go.set()
    end = time.monotonic() + 10.0
    while not done.is_set() and time.monotonic() < end:
        rig.loop.renew_lease()
        rig.step()
    th.join(5.0)
    run_leased(rig, 0.01)
    assert done.is_set()
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.ESTOP
    assert rig.loop.state == OutputState.TRIPPED
    assert bad == []
    assert_safe(rig)


def test_trip_from_another_thread_while_it_holds_the_bus(running_rig):
    """A trip while the loop holds the bus lock still cuts (the relay first, the DAC after at
    most BUS_LOCK_TIMEOUT_S), and never deadlocks."""
    rig = running_rig
    result = {}

    with rig.board.bus_lock:
        th = threading.Thread(target=lambda: result.setdefault("r", rig.guard.trip(Fault.ESTOP)))
        th.start()
        th.join(2.0)
        assert not th.is_alive()
        assert not rig.sim.enable_high
    rig.step()
    assert result["r"].code == Fault.ESTOP
    assert rig.loop.state == OutputState.TRIPPED
    assert not rig.sim.enable_high
    rig.run(0.002)
    assert abs(rig.sim.current_ua) < 1.0


# --------------------------------------------------------------------------------------------
# a trip landing inside a tick (deterministic stand-in for another thread)
# --------------------------------------------------------------------------------------------


def _lift_and_wait_for_probe(rig) -> None:
    """Lift the electrodes and run to the tick just before a probe burst starts."""
    rig.sim.inject("lift_off")
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.LIFTED, 0.05)
    for _ in range(1000):
        if rig.loop._probe_left == 0 and rig.clock.now() + rig.tick_s >= rig.loop._next_probe:
            return
        rig.loop.renew_lease()
        rig.step()
    raise AssertionError("no probe burst started")


def test_trip_racing_a_probe_burst_leaves_enable_low(running_rig, monkeypatch):
    """Regression: a trip landing inside a LIFTED tick before a probe burst's enable used to
    leave output enable high while latched."""
    rig = running_rig
    _lift_and_wait_for_probe(rig)
    adc = rig.board.adc
    real_read = adc.read
    calls = []

    def read(ch):
        v = real_read(ch)
        calls.append(ch)
        if len(calls) == 3:  # after the tick's samples, before the probe starts
            rig.guard.trip(Fault.ESTOP, "on-screen STOP from the UI thread")
        return v

    monkeypatch.setattr(adc, "read", read)
    rig.step()
    monkeypatch.setattr(adc, "read", real_read)
    assert rig.guard.tripped
    rig.run(0.05)
    assert rig.loop.state == OutputState.TRIPPED
    assert not rig.sim.enable_high, "output enable is high while a fault is latched"


def test_trip_racing_a_start_leaves_enable_low(rig, monkeypatch):
    """Regression: a trip landing inside start()'s apply() used to leave enable high."""
    assert rig.post()["passed"]
    test_load = rig.board.lines.test_load
    real_off = test_load.off
    fired = []

    def off():
        real_off()
        if not fired:
            fired.append(True)
            rig.guard.trip(Fault.ESTOP, "on-screen STOP from the UI thread")

    rig.loop.start(WaveformSpec(50.0, 10.0), 200.0)
    monkeypatch.setattr(test_load, "off", off)
    rig.step()  # start's apply() runs here
    monkeypatch.setattr(test_load, "off", real_off)
    assert fired and rig.guard.tripped
    rig.run(0.05)
    assert rig.loop.state == OutputState.TRIPPED
    assert not rig.sim.enable_high, "output enable is high while a fault is latched"


def test_enable_landing_between_trips_cut_and_latch_ends_low(running_rig, monkeypatch):
    """The finest interleaving: trip() has driven enable low but not yet latched the fault when
    the loop thread enables the output (a probe or a resume); the output must still end low."""
    rig = running_rig
    enable = rig.board.lines.output_enable
    real_off = enable.off
    landed = []

    def off():
        real_off()
        if not landed and rig.guard.fault is None:
            landed.append(True)
            rig.loop._enable_output()  # the loop thread, right now

    monkeypatch.setattr(enable, "off", off)
    rig.guard.trip(Fault.ESTOP, "on-screen STOP from the UI thread")
    monkeypatch.setattr(enable, "off", real_off)
    assert landed
    assert not rig.sim.enable_high
    rig.run(0.01)
    assert rig.loop.state == OutputState.TRIPPED
    assert not rig.sim.enable_high


# --------------------------------------------------------------------------------------------
# hardware latch
# --------------------------------------------------------------------------------------------


def _fire_comparator(rig) -> None:
    """The hardware comparator sets its latch (what a current spike above DAC B does)."""
    with rig.sim.lock:
        rig.sim.plant._set_latch(True, rig.clock.now())


def test_hardware_latch_during_output_trips(running_rig):
    rig = running_rig
    t0 = rig.clock.now()
    _fire_comparator(rig)
    run_leased(rig, 0.002)
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.HW_OVERCURRENT
    assert cut_latency_ms(rig, t0) <= TICK_MS + EPS_MS
    assert_safe(rig)


def test_hardware_latch_while_lifted_trips(running_rig):
    """Regression: the comparator latch used to be ignored while LIFTED (stuck LIFTED, no fault)."""
    rig = running_rig
    rig.sim.inject("lift_off")
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.LIFTED, 0.05)
    _fire_comparator(rig)
    run_leased(rig, 0.5)
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.HW_OVERCURRENT


# --------------------------------------------------------------------------------------------
# faults only the self-test can see, and what a trip still does with them
# --------------------------------------------------------------------------------------------


def test_welded_relay_fails_post(rig):
    rig.sim.inject("welded_relay")
    result = rig.post()
    assert result is not None and not result["passed"]
    # The latch and the dead-man both cut through the relay, so a welded relay is already
    # caught at the first of them (latch_trip); see test_post.py for the relay step itself.
    assert result["failed_step"] in ("latch_trip", "deadman", "relay")
    assert rig.guard.fault.code == Fault.POST_FAILED
    assert not rig.guard.post_valid
    with pytest.raises(CommandRefused):
        rig.loop.start(WaveformSpec(50.0, 10.0), 100.0)
    assert not rig.sim.enable_high


def test_dead_comparator_fails_post(rig):
    rig.sim.inject("dead_comparator")
    result = rig.post()
    assert result is not None and not result["passed"]
    assert result["failed_step"] in ("latch_rearm", "latch_trip")
    assert rig.guard.fault.code == Fault.POST_FAILED
    with pytest.raises(CommandRefused):
        rig.loop.start(WaveformSpec(50.0, 10.0), 100.0)


def test_trip_with_a_welded_relay_still_zeroes_the_current(running_rig):
    """The second path: with the relay welded shut, the DAC (SPI and /SHDN) brings it to zero."""
    rig = running_rig
    rig.sim.inject("welded_relay")
    run_leased(rig, 0.01)
    assert rig.sim.relay_closed
    rig.loop.estop()
    rig.run(0.001)
    assert rig.sim.relay_closed  # still welded
    assert rig.sim.plant.i_command_ua == 0.0
    assert abs(rig.sim.current_ua) < 1.0


@pytest.mark.parametrize("load_ohm", [2000.0, 10000.0])
def test_overcurrent_with_a_dead_comparator_still_trips_in_software(running_rig, load_ohm):
    rig = running_rig
    rig.sim.set_load(Load.resistor(load_ohm))
    run_leased(rig, 0.05)
    rig.sim.inject("dead_comparator")
    t0 = rig.clock.now()
    rig.sim.inject("overcurrent")
    run_leased(rig, 0.002)
    assert rig.guard.fault is not None
    assert rig.guard.fault.code in RUN_TRIPS["overcurrent"][0]
    assert cut_latency_ms(rig, t0) <= 0.5 + EPS_MS
    assert_safe(rig)


@pytest.mark.parametrize(
    "load",
    [
        "normal",
        "sweaty",
        500.0,
        2000.0,
        10000.0,
        # Dry skin is compliance-limited (LIFTED): the runaway shows in the next probe burst.
        # Regression: the setpoint check used to be skipped in probe bursts (+59 uA for a
        # 15 uA probe, never tripped).
        "dry",
    ],
)
def test_overcurrent_trips_on_every_load(running_rig, load):
    rig = running_rig
    if isinstance(load, str):
        rig.sim.set_skin(load)
    else:
        rig.sim.set_load(Load.resistor(load))
    run_leased(rig, 0.05)
    lim = rig.cfg.limits
    high_ticks: list[int] = [0]

    def watch(r):
        if abs(r.sim.current_ua) > lim.overcurrent_trip_ua:
            high_ticks[0] += 1

    rig.on_tick = watch
    # Dry skin is compliance-limited: the loop may be LIFTED with the relay open, and then sees
    # the runaway stage at its next probe burst.
    codes = RUN_TRIPS["overcurrent"][0]
    if rig.loop.state in DRIVING:
        bound_ms = 0.5
    else:
        # Next probe burst, then the setpoint check's debounce (a compliance-limited runaway
        # reads far above the 15 uA probe, or with the wrong polarity).
        bound_ms = lim.probe_interval_ms + lim.overcurrent_debounce_ms + 2 * TICK_MS
        codes = codes | {Fault.OVERCURRENT_SETPOINT}
    t0 = rig.clock.now()
    rig.sim.inject("overcurrent")
    run_leased_until(rig, lambda: rig.guard.tripped, bound_ms / 1000.0 + 0.05)
    assert rig.guard.fault is not None, rig.loop.state
    assert rig.guard.fault.code in codes
    assert cut_latency_ms(rig, t0) <= bound_ms + EPS_MS
    assert high_ticks[0] <= 1
    assert_safe(rig)


# --------------------------------------------------------------------------------------------
# the lift-off cycle
# --------------------------------------------------------------------------------------------


def test_lift_off_cycle(running_rig):
    rig = running_rig
    lim = rig.cfg.limits
    target = rig.loop.target_ua
    slew_per_tick = lim.max_current_ua / lim.ramp_up_s * rig.tick_s
    log: list[tuple[float, OutputState, float, float, bool, float]] = []
    rig.on_tick = lambda r: log.append(
        (
            r.clock.now(),
            r.loop.state,
            r.loop.amplitude_ua,
            r.sim.current_ua,
            r.sim.enable_high,
            r.sim.plant.dac_target_ua,
        )
    )
    t_lift = rig.clock.now()
    relay_ops = sum(1 for e in rig.sim.events if e[1] == "relay")
    rig.sim.inject("lift_off")
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.LIFTED, 0.02)
    assert enable_low_after(rig, t_lift) is None  # the DAC cut it; the relay stays closed
    run_leased(rig, 0.6)  # several probe bursts
    assert rig.loop.state == OutputState.LIFTED and not rig.guard.tripped
    lifted = [row for row in log if row[1] == OutputState.LIFTED]
    assert max(abs(row[3]) for row in lifted) <= lim.probe_current_ua * 1.3
    assert max(abs(row[5]) for row in lifted) <= lim.probe_current_ua * 1.3
    assert sum(1 for row in lifted if abs(row[5]) > 0.5 * lim.probe_current_ua) >= 5 * 8, (
        "fewer than five probe bursts were tried while lifted"
    )
    assert all(row[4] for row in lifted)
    assert sum(1 for e in rig.sim.events if e[1] == "relay") == relay_ops, "the relay operated"
    assert rig.loop.snapshot.contact is False

    t_back = rig.clock.now()
    mark = len(log)
    rig.sim.clear("lift_off")
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.RAMP_UP, 2.0)
    t_resume = rig.clock.now()
    assert (t_resume - t_back) * 1000.0 >= lim.recontact_ms - EPS_MS
    assert (t_resume - t_back) * 1000.0 <= lim.recontact_ms + 2 * lim.probe_interval_ms + 50
    assert run_leased_until(rig, lambda: rig.loop.state == OutputState.ON, 3.0)
    assert not rig.guard.tripped
    assert rig.loop.amplitude_ua == target
    after = log[mark:]
    resumed = [i for i, row in enumerate(after) if row[1] != OutputState.LIFTED]
    first = resumed[0]
    assert after[first][2] <= slew_per_tick + 1e-9  # from zero
    amps = [row[2] for row in after[first:]]
    steps = [b - a for a, b in zip(amps, amps[1:], strict=False)]
    assert max(steps) <= slew_per_tick + 1e-9
    # The true current ramps too: no sting on re-contact.
    # (the tick that decides re-contact may still carry the last probe's small current)
    for k, row in enumerate(after[first : first + 40]):
        assert abs(row[3]) <= max(lim.probe_current_ua * 1.3, (k + 2) * slew_per_tick * 1.2 + 10)
