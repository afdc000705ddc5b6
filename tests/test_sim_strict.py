"""The simulated board is as strict as the parts: a relay with operate, bounce and release times.

Everything here runs in simulated time on the board alone (no control loop), or through the
self-test, so every figure is exact and repeatable.
"""

from __future__ import annotations

import pytest

from hw.board import build_sim_board
from hw.chips.mcp4922 import CHANNEL_B, DacWord
from hw.clock import SimClock
from hw.config import load_config
from hw.sim.plant import Load
from hw.sim.rig import SimRig

STEP_S = 20e-6  # observation step: finer than any relay edge
CHECK_UA = 200.0


class Bench:
    """The simulated board on a bench: lines and chips driven by hand, time stepped by hand."""

    def __init__(self):
        self.cfg = load_config(env={})
        self.clock = SimClock()
        self.board = build_sim_board(self.cfg, self.clock)
        self.sim = self.board.sim
        self.plant = self.sim.plant
        self.lines = self.board.lines
        self._kick = False
        fe = self.cfg.hardware.front_end
        # Comparator threshold high, latch re-armed, test load selected, DAC A at +200 uA.
        self.lines.dac_shutdown.on()
        code_b = round(self.cfg.limits.hw_overcurrent_ua / fe.threshold_ua_per_code)
        self.board.dac.write(DacWord(CHANNEL_B, code_b))
        self.wait(0.001)
        self.lines.latch_rearm.on()
        self.lines.latch_rearm.off()
        assert not self.plant.latched
        self.lines.test_load.on()
        self.board.dac.write_a(fe.dac_zero_code + round(CHECK_UA / fe.dac_ua_per_code))

    def wait(self, seconds: float, kick: bool = False) -> list[tuple[float, bool, float]]:
        """Advance ``seconds``; returns (t, contacts conduct, current uA) every STEP_S. With
        ``kick`` the dead-man line toggles every 0.5 ms, as the loop does."""
        rows = []
        t_end = self.clock.now() + seconds
        next_kick = self.clock.now()
        while self.clock.now() < t_end - 1e-12:
            if kick and self.clock.now() >= next_kick - 1e-12:
                self._kick = not self._kick
                self.lines.deadman_kick.value = self._kick
                next_kick += 0.0005
            self.clock.advance(STEP_S)
            self.sim.advance()
            rows.append((self.clock.now(), self.plant.relay_closed, self.plant.i_load_ua))
        return rows

    def close(self):
        self.board.close()


@pytest.fixture
def bench():
    b = Bench()
    yield b
    b.close()


def _first(rows, pred):
    return next(t for t, closed, i in rows if pred(closed, i))


def test_relay_conducts_only_after_its_operate_time_and_flickers_while_it_bounces(bench):
    p = bench.plant
    t0 = bench.clock.now()
    bench.lines.output_enable.on()
    rows = bench.wait(0.010, kick=True)  # the first kick energises the coil at t0
    operate, bounce = p.relay_operate_s, p.relay_bounce_s
    assert operate >= 3e-3 and bounce >= 0.5e-3  # a real relay, not a 0 ms switch
    before = [r for r in rows if r[0] < t0 + operate - STEP_S]
    assert before and not any(closed or abs(i) > 0.0 for _, closed, i in before)
    t_touch = _first(rows, lambda closed, i: closed)
    assert t_touch == pytest.approx(t0 + operate, abs=2 * STEP_S)
    bouncing = [r for r in rows if t_touch <= r[0] < t0 + operate + bounce - STEP_S]
    states = [closed for _, closed, _ in bouncing]
    # Bounce: several openings and closings, current only while the contacts touch.
    flips = sum(1 for a, b in zip(states, states[1:], strict=False) if a != b)
    assert flips >= 4, states
    assert all(abs(i) < 1e-9 for _, closed, i in bouncing if not closed)
    assert any(abs(i) > CHECK_UA * 0.5 for _, closed, i in bouncing if closed)
    settled = [r for r in rows if r[0] >= t0 + operate + bounce + STEP_S]
    assert settled and all(closed for _, closed, _ in settled)
    assert all(abs(i) > CHECK_UA * 0.9 for _, _, i in settled[10:])
    # The settled relay is within the datasheet figure the software waits for.
    assert (operate + bounce) * 1000.0 <= bench.cfg.hardware.front_end.relay_operate_ms


def test_relay_release_takes_its_release_time_and_stays_within_the_datasheet(bench):
    p = bench.plant
    bench.lines.output_enable.on()
    bench.wait(0.010, kick=True)
    assert p.relay_closed and p.relay_settled
    t1 = bench.clock.now()
    bench.lines.output_enable.off()
    rows = bench.wait(0.003, kick=True)
    t_part = _first(rows, lambda closed, i: not closed)
    assert t_part - t1 == pytest.approx(p.relay_release_s, abs=2 * STEP_S)
    assert all(abs(i) > CHECK_UA * 0.9 for t, _, i in rows if t < t_part - STEP_S)
    assert all(abs(i) == 0.0 for t, _, i in rows if t >= t_part)
    assert p.relay_release_s * 1000.0 <= bench.cfg.hardware.front_end.relay_release_ms <= 1.0


def test_a_coil_pulse_shorter_than_the_operate_time_never_closes_the_contacts(bench):
    p = bench.plant
    bench.lines.output_enable.on()
    rows = bench.wait(p.relay_operate_s * 0.6, kick=True)
    bench.lines.output_enable.off()
    rows += bench.wait(0.010, kick=True)
    assert not any(closed for _, closed, _ in rows)
    assert p.q_abs_uc == 0.0


def test_current_flows_exactly_while_the_contacts_conduct_however_coarse_the_steps(bench):
    """The plant splits its integration at every relay edge: one 40 ms jump delivers the same
    charge as 20 us steps (the old plant took the end state for the whole jump)."""
    fine, coarse = bench, Bench()
    try:
        for b in (fine, coarse):
            b.plant.load = Load.resistor(1000.0)
            b.lines.output_enable.on()
            b.lines.deadman_kick.on()  # one kick: the coil holds for the dead-man time only
            b.plant.q_abs_uc = 0.0
        fine.wait(0.040)
        coarse.clock.advance(0.040)
        coarse.sim.advance()
        fe = fine.cfg.hardware.front_end
        p = fine.plant
        closed_s = fe.deadman_ms / 1000.0 - p.relay_operate_s + p.relay_release_s
        assert fine.plant.q_abs_uc == pytest.approx(CHECK_UA * closed_s, rel=0.08)
        assert coarse.plant.q_abs_uc == pytest.approx(fine.plant.q_abs_uc, rel=1e-3)
        assert not coarse.plant.relay_closed
    finally:
        coarse.close()


def test_every_reading_the_self_test_judges_is_taken_with_settled_contacts():
    """POST waits the relay's datasheet operate and release times before each judgement, so it
    passes with the slowest relay the datasheet allows and never reads a bouncing contact."""
    rig = SimRig(seed=1)
    try:
        fe = rig.cfg.hardware.front_end
        p = rig.sim.plant
        p.relay_bounce_s = 1.0e-3
        p.relay_operate_s = fe.relay_operate_ms / 1000.0 - p.relay_bounce_s
        p.relay_release_s = fe.relay_release_ms / 1000.0
        unsettled = []
        read = rig.loop.read_current

        def watched():
            if not p.relay_settled:
                unsettled.append((rig.clock.now(), p.coil_on, p.relay_closed))
            return read()

        rig.loop.read_current = watched
        result = rig.post()
        assert result["passed"], result
        assert unsettled == []
    finally:
        rig.close()


def test_a_relay_twice_as_slow_as_its_datasheet_fails_the_self_test():
    rig = SimRig(seed=1)
    try:
        p = rig.sim.plant
        p.relay_operate_s = 2 * rig.cfg.hardware.front_end.relay_operate_ms / 1000.0
        result = rig.post()
        assert not result["passed"]
        assert result["failed_step"] == "calibration", result
    finally:
        rig.close()


# --------------------------------------------------------------------------------------------
# fault injection: the current channel frozen alone
# --------------------------------------------------------------------------------------------


def test_adc_current_stuck_freezes_only_the_current_channel(bench):
    """Only CH0 repeats its last conversion; the electrode voltage follows a polarity reversal and
    the reference stays live (so the reference check, which catches adc_stuck, cannot see it)."""
    ch = bench.cfg.hardware.adc_channels
    fe = bench.cfg.hardware.front_end
    adc = bench.board.adc
    bench.lines.output_enable.on()
    bench.wait(0.010, kick=True)
    plus = adc.read(ch.current)
    assert plus - fe.adc_zero_code > 0.9 * CHECK_UA / fe.adc_ua_per_code
    bench.sim.inject("adc_current_stuck")
    bench.board.dac.write_a(fe.dac_zero_code - round(CHECK_UA / fe.dac_ua_per_code))
    bench.wait(0.002, kick=True)
    assert bench.plant.i_load_ua < -0.9 * CHECK_UA  # the current really reversed
    assert {adc.read(ch.current) for _ in range(50)} == {plus}
    volts = [adc.read(ch.electrode_voltage) for _ in range(20)]
    assert all(
        v - 2048 < -0.5 * CHECK_UA * 1e-6 * fe.test_load_ohm / fe.electrode_v_per_code
        for v in volts
    )
    refs = [adc.read(ch.reference) for _ in range(50)]
    assert len(set(refs)) > 1
    assert all(abs(r - fe.reference_code) <= fe.reference_tolerance_codes for r in refs)
    bench.sim.clear("adc_current_stuck")
    minus = adc.read(ch.current)
    assert fe.adc_zero_code - minus > 0.9 * CHECK_UA / fe.adc_ua_per_code
