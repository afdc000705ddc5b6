"""Random command sequences, loads and single faults; the safety invariants are checked every tick.

Invariants (checked after every 0.5 ms tick through ``SimRig.on_tick``):

* |true current| above ``limits.overcurrent_trip_ua`` never lasts two consecutive ticks;
* |true current| above ``max_current_ua * 1.15 + 10`` never lasts two consecutive ticks while
  no ``overcurrent`` (stage runaway) fault has been injected in that time;
* once a trip is seen, output enable stays low until an acknowledge call succeeded (and it is
  never high while the guard is tripped);
* DAC A never commands more than the code ceiling (1000 uA), nor more than the loop's own clamp
  (``max_current_ua * 1.15``);
* the loop's net DC charge stays within ``limits.max_net_charge_uc`` unless NET_CHARGE tripped.
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hw.config import CEIL_CURRENT_UA
from hw.control.loop import ACTIVE, CommandRefused, OutputState
from hw.control.waveform import WaveformSpec
from hw.hal.sim.board import FAULTS
from hw.hal.sim.plant import Load
from hw.hal.sim.rig import SimRig
from hw.safety import Fault

SPECS = [WaveformSpec(50.0, 10.0), WaveformSpec(10.0, 40.0), WaveformSpec(100.0, 2.0)]

targets_any = st.one_of(
    st.floats(min_value=-100.0, max_value=1200.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 400.0, 400.0001, -0.0]),
    st.integers(min_value=-10, max_value=1200),
    st.booleans(),
    st.none(),
)
loads = st.one_of(
    st.sampled_from([500.0, 2000.0, 10000.0]).map(Load.resistor),
    st.sampled_from(["normal", "dry", "sweaty"]),
    st.floats(min_value=0.0, max_value=1.0),  # contact fraction
)


class SafetyMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.rig = SimRig(seed=1)
        cfg = self.rig.cfg
        self.lim = cfg.limits
        self.cmd_cap = self.lim.max_current_ua * 1.15 + cfg.hardware.front_end.dac_ua_per_code
        self.over_prev = False
        self.high_prev = False
        self.runaway_recent = 0  # ticks since an 'overcurrent' fault was last active
        self.latched = False  # a trip was seen and no acknowledge has succeeded since
        self.violations: list[str] = []
        self.rig.on_tick = self._check

    @initialize(
        level_ua=st.floats(min_value=40.0, max_value=400.0),
        spec=st.sampled_from(SPECS),
        load=loads,
        settle=st.booleans(),
    )
    def power_up(self, level_ua, spec, load, settle):
        """Self-test, then a treatment starts (most faults matter while the output is on);
        half the time it is run through its ramp first."""
        rig = self.rig
        result = rig.post()
        assert result is not None and result["passed"]
        self.set_load(load)
        rig.loop.start(spec, level_ua)
        rig.step()
        for _ in range(round(2.0 / rig.tick_s) if settle else 100):
            rig.loop.renew_lease()
            rig.step()
            if rig.loop.state != OutputState.RAMP_UP:
                break

    def teardown(self):
        self.rig.on_tick = None
        self.rig.sim.clear_all()
        self.rig.close()

    # ------------------------------------------------------------------ per-tick invariants
    def _check(self, rig) -> None:
        p = rig.sim.plant
        t = f"t={rig.clock.now() - 1000:.4f} s"
        i = abs(p.i_load_ua)
        over = i > self.lim.overcurrent_trip_ua
        if over and self.over_prev:
            self.violations.append(f"{t}: {i:.0f} uA above the trip level for 2 ticks")
        self.over_prev = over
        if "overcurrent" in rig.sim.active_faults:
            self.runaway_recent = 0
        else:
            self.runaway_recent += 1
        high = i > self.lim.max_current_ua * 1.15 + 10
        if high and self.high_prev and self.runaway_recent > 2:
            self.violations.append(f"{t}: {i:.0f} uA above max_current for 2 ticks")
        self.high_prev = high
        if rig.guard.tripped:
            self.latched = True
            if p.enable:
                self.violations.append(f"{t}: enable high while tripped ({rig.guard.fault.code})")
        if self.latched and p.enable:
            self.violations.append(f"{t}: enable high after a trip, before an acknowledge")
        cmd = abs(p.i_command_ua)
        if cmd > CEIL_CURRENT_UA or cmd > self.cmd_cap:
            self.violations.append(f"{t}: DAC A commands {cmd:.0f} uA")
        q = abs(rig.loop.q_net_uc)
        if q > self.lim.max_net_charge_uc and not (
            rig.guard.fault is not None and rig.guard.fault.code == Fault.NET_CHARGE
        ):
            self.violations.append(f"{t}: net charge {q:.1f} uC without a NET_CHARGE trip")

    @invariant()
    def no_violation(self):
        assert self.violations == [], self.violations[:5]

    # ------------------------------------------------------------------ rules
    @rule(ms=st.sampled_from([1, 3, 10, 30, 100, 400]), renew=st.booleans())
    def run(self, ms, renew):
        rig = self.rig
        for _ in range(round(ms / 1000 / rig.tick_s)):
            if renew:
                rig.loop.renew_lease()
            rig.step()

    @rule(value=targets_any)
    def set_target(self, value):
        loop = self.rig.loop
        valid = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and not math.isnan(value)
            and 0 <= value <= self.lim.level_max_ua
        )
        before = (loop.target_ua, len(loop._cmds), loop.state)
        try:
            loop.set_target(value)
        except CommandRefused:
            assert not valid, f"{value!r} refused"
            assert (loop.target_ua, len(loop._cmds), loop.state) == before
        else:
            assert valid, f"{value!r} accepted"

    @rule(load=loads)
    def set_load(self, load):
        sim = self.rig.sim
        if "lift_off" in sim.active_faults:
            return  # the lift-off fault owns the contact
        if isinstance(load, Load):
            sim.set_load(load)
        elif isinstance(load, str):
            sim.set_skin(load)
        else:
            sim.set_contact(load)

    @rule(level_ua=st.floats(min_value=0.0, max_value=400.0), spec=st.sampled_from(SPECS))
    def start(self, level_ua, spec):
        loop = self.rig.loop
        blocker = loop.start_blocker()
        state_before = loop.state
        try:
            loop.start(spec, level_ua)
        except CommandRefused:
            assert blocker is not None
        else:
            assert blocker is None
        self.rig.step()
        if blocker is not None and state_before not in ACTIVE:
            assert loop.state not in ACTIVE, f"started although '{blocker}'"

    @rule()
    def stop(self):
        self.rig.loop.stop()
        self.rig.step()

    @precondition(lambda self: not self.rig.sim.active_faults)
    @rule(fault=st.sampled_from(FAULTS))
    def inject(self, fault):
        self.rig.sim.inject(fault)

    @precondition(lambda self: bool(self.rig.sim.active_faults))
    @rule()
    def clear(self):
        for f in sorted(self.rig.sim.active_faults):
            self.rig.sim.clear(f)

    @rule()
    def acknowledge(self):
        rig = self.rig
        was = rig.guard.fault
        try:
            rig.loop.acknowledge()
        except CommandRefused:
            # Refused: nothing was cleared.
            assert rig.guard.fault is was
            return
        if was is not None:
            cause = rig.loop._cause_present()
            assert cause is None, f"acknowledged while '{cause}'"
        assert not rig.guard.tripped
        self.latched = False
        rig.step()

    @rule()
    def post(self):
        rig = self.rig
        loop = rig.loop
        if loop.state in (OutputState.OFF, OutputState.TRIPPED) and not rig.guard.tripped:
            if rig.board.lines.charger_pin.state:
                # The charger interlock holds the relay open: refused, with what to do.
                with pytest.raises(CommandRefused, match="charger"):
                    loop.run_post()
                return
            result = rig.post()
            if result is not None and result["passed"]:
                assert rig.guard.post_valid and loop.state == OutputState.OFF
            else:
                assert rig.guard.tripped and not rig.guard.post_valid
        else:
            try:
                loop.run_post()
            except CommandRefused:
                pass
            else:
                raise AssertionError(f"POST accepted in state {loop.state}")


# Derandomized: the same 100 programs of 20 steps on every run, so CI is deterministic (a random
# seed found the charger + self-test case on one run in five). Explore with a random seed by hand:
# HYPOTHESIS_RANDOM=1 ./scripts/test tests/test_safety_invariants.py
SafetyMachine.TestCase.settings = settings(
    derandomize=not os.environ.get("HYPOTHESIS_RANDOM"),
    max_examples=100,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSafetyInvariants = SafetyMachine.TestCase
