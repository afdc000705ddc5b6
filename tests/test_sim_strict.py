"""The simulated board is as strict as the parts: a relay with operate, bounce and release times,
an MCP4922 that honours every bit of its word, an MCP3208 that answers bit by bit, a bus that
releases the GIL, and a mutated driver that now fails the self-test.

Everything here runs in simulated time on the board alone (no control loop), or through the
self-test, so every figure is exact and repeatable.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

from hw.clock import SimClock
from hw.config import load_config
from hw.hal.board import build_sim_board
from hw.hal.bus import SpiFault
from hw.hal.chips import mcp3208, mcp4922
from hw.hal.chips.mcp4922 import CHANNEL_A, CHANNEL_B, DacWord
from hw.hal.sim.plant import Load
from hw.hal.sim.rig import SimRig
from hw.safety import Fault

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


# --------------------------------------------------------------------------------------------
# MCP4922: every bit of the word acts as on the chip
# --------------------------------------------------------------------------------------------


def _write(bench, word):
    bench.sim.dac_bus.xfer2(list(mcp4922.encode(word)))


def test_dac_gain_bit_doubles_the_output_clipped_at_the_rail(bench):
    p = bench.plant
    fe = bench.cfg.hardware.front_end
    ua = fe.dac_ua_per_code
    _write(bench, DacWord(CHANNEL_A, 1500))
    assert p.i_command_ua == pytest.approx((1500 - fe.dac_zero_code) * ua)
    _write(bench, DacWord(CHANNEL_A, 1500, gain_1x=False))
    assert p.dac_output_v(p.dac_a_word) == pytest.approx(2 * 3.3 * 1500 / 4096)
    assert p.i_command_ua == pytest.approx((3000 - fe.dac_zero_code) * ua)
    # Twice the zero code is the rail: full scale positive, not zero.
    _write(bench, DacWord(CHANNEL_A, fe.dac_zero_code, gain_1x=False))
    assert p.dac_output_v(p.dac_a_word) == pytest.approx(p.dac_vdd_v)
    assert p.i_command_ua == pytest.approx((4096 - fe.dac_zero_code) * ua)
    _write(bench, DacWord(CHANNEL_A, 4000, gain_1x=False))
    assert p.i_command_ua == pytest.approx((4096 - fe.dac_zero_code) * ua)  # clipped
    # Channel B (the comparator threshold) the same way.
    _write(bench, DacWord(CHANNEL_B, 1000))
    t1 = p.threshold_ua
    _write(bench, DacWord(CHANNEL_B, 1000, gain_1x=False))
    assert p.threshold_ua == pytest.approx(2 * t1)
    assert t1 == pytest.approx(1000 * fe.threshold_ua_per_code)


def test_dac_buf_bit_takes_the_buffered_reference_range(bench):
    """VREF is tied to VDD: unbuffered is in range, buffered stops 40 mV short of VDD."""
    p = bench.plant
    _write(bench, DacWord(CHANNEL_A, 3000))
    assert p.dac_output_v(p.dac_a_word) == pytest.approx(3.3 * 3000 / 4096)
    _write(bench, DacWord(CHANNEL_A, 3000, buffered=True))
    assert p.dac_output_v(p.dac_a_word) == pytest.approx((3.3 - 0.04) * 3000 / 4096)
    fe = bench.cfg.hardware.front_end
    # At the zero code the stage sees 20 mV below its mid-scale bias: about -12 uA.
    _write(bench, DacWord(CHANNEL_A, fe.dac_zero_code, buffered=True))
    assert p.i_command_ua == pytest.approx(-0.04 / 2 / 3.3 * 4096 * fe.dac_ua_per_code)


def test_dac_shdn_bit_and_channel_select(bench):
    p = bench.plant
    fe = bench.cfg.hardware.front_end
    _write(bench, DacWord(CHANNEL_A, 2500))
    _write(bench, DacWord(CHANNEL_B, 1500))
    a = p.i_command_ua
    assert a > 0 and p.threshold_ua > 0
    _write(bench, DacWord(CHANNEL_B, 1200))  # a B word leaves A alone
    assert p.i_command_ua == a and p.threshold_ua == pytest.approx(1200 * fe.threshold_ua_per_code)
    _write(bench, DacWord(CHANNEL_A, 2500, active=False))
    assert p.i_command_ua == 0.0  # shut down: the bias network holds mid-scale
    _write(bench, DacWord(CHANNEL_B, 1200, active=False))
    assert p.threshold_ua == 0.0  # 0 V at the comparator: the latch trips
    bench.wait(0.001)
    assert p.latched


def test_dac_word_length_is_handled_as_the_chip_does(bench):
    p = bench.plant
    _write(bench, DacWord(CHANNEL_A, 2500))
    assert bench.sim.dac_bus.xfer2([0x3A]) == [0]  # /CS rose before 16 clocks: ignored
    assert p.dac_a_code == 2500
    word = list(mcp4922.encode(DacWord(CHANNEL_A, 1234)))
    assert bench.sim.dac_bus.xfer2([*word, 0xFF]) == [0, 0, 0]  # clocks after the 16th ignored
    assert p.dac_a_code == 1234


# --------------------------------------------------------------------------------------------
# MCP3208: the simulated chip answers bit by bit
# --------------------------------------------------------------------------------------------


def _fixed_codes(bench, monkeypatch, codes: dict[str, int]):
    monkeypatch.setattr(bench.plant, "adc_code", lambda role: codes.get(role, 0))


def test_adc_differential_request_returns_the_differential_reading(bench, monkeypatch):
    ch = bench.cfg.hardware.adc_channels
    assert (ch.compliance_rail, ch.reference) == (2, 3)
    _fixed_codes(bench, monkeypatch, {"compliance_rail": 1536, "reference": 3103})
    bus = bench.sim.adc_bus

    def diff(d):
        return mcp3208.decode_reply(bus.xfer2([0b0000_0100 | (d >> 2), (d & 3) << 6, 0]))

    assert diff(0b011) == 3103 - 1536  # CH3 (IN+) - CH2 (IN-)
    assert diff(0b010) == 0  # CH2 - CH3 < 0: the chip reads 0
    assert mcp3208.decode_reply(bus.xfer2(mcp3208.encode_read(3))) == 3103


def test_adc_malformed_requests_get_what_the_chip_sends(bench, monkeypatch):
    _fixed_codes(bench, monkeypatch, {"reference": 0xABC})
    bus = bench.sim.adc_bus
    assert bus.xfer2([0, 0, 0]) == [0xFF, 0xFF, 0xFF]  # no start bit: MISO never driven
    assert bus.xfer2([0b0000_1101, 0b1000_0000, 0]) == [0xFF, 0xD5, 0x78]  # one clock early
    assert bus.xfer2([0, 0b0000_0110, 0b1100_0000, 0]) == [0xFF, 0xFF, 0xEA, 0xBC]  # 8 zeros more
    late = bus.xfer2([0b0000_0011, 0b0110_0000, 0])  # one clock late: B0 never comes out
    assert late == [0xFF, 0xF5, 0x5E]
    with pytest.raises(SpiFault):
        mcp3208.decode_reply(late)  # what the driver sees: the null bit reads high


# --------------------------------------------------------------------------------------------
# a mutated driver now fails the self-test (it passed on the forgiving sim)
# --------------------------------------------------------------------------------------------


def _mutate_dac_words(monkeypatch, **fields):
    encode = mcp4922.encode
    monkeypatch.setattr(mcp4922, "encode", lambda w: encode(dataclasses.replace(w, **fields)))


def _mutate_adc_requests(monkeypatch, fn):
    monkeypatch.setattr(mcp3208, "_REQUESTS", [fn(r) for r in mcp3208._REQUESTS])


@pytest.mark.parametrize(
    ("mutation", "step", "fault"),
    [
        (lambda mp: _mutate_dac_words(mp, gain_1x=False), "calibration", Fault.POST_FAILED),
        (lambda mp: _mutate_dac_words(mp, buffered=True), "calibration", Fault.POST_FAILED),
        (lambda mp: _mutate_dac_words(mp, active=False), "latch_rearm", Fault.POST_FAILED),
        (
            lambda mp: _mutate_adc_requests(mp, lambda r: [r[0] & ~0b010, r[1], r[2]]),
            "reference",
            Fault.POST_FAILED,
        ),
        (  # start bit one clock early
            lambda mp: _mutate_adc_requests(
                mp, lambda r: [(r[0] << 1) & 0xFF | r[1] >> 7, (r[1] << 1) & 0xFF, 0]
            ),
            None,
            Fault.SPI_ERROR,
        ),
    ],
    ids=["dac_gain_2x", "dac_buffered", "dac_shutdown_bit", "adc_differential", "adc_early_start"],
)
def test_a_mutated_driver_fails_the_self_test(monkeypatch, mutation, step, fault):
    mutation(monkeypatch)
    rig = SimRig(seed=1)  # the DAC driver precomputes its words at construction
    try:
        result = rig.post()
        assert rig.guard.fault is not None and rig.guard.fault.code == fault, rig.guard.fault
        assert not rig.guard.post_valid
        if step is not None:
            assert not result["passed"] and result["failed_step"] == step, result
        assert not rig.sim.enable_high
    finally:
        rig.close()


# --------------------------------------------------------------------------------------------
# the bus releases the GIL on every transfer, as py-spidev does
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["dac", "adc"])
def test_every_sim_transfer_releases_the_gil_outside_the_board_lock(bench, monkeypatch, which):
    """py-spidev wraps its ioctl in Py_BEGIN_ALLOW_THREADS: while another thread exists, every
    simulated transfer yields the GIL once (a zero-timeout select(), a syscall that drops it), and
    not while it holds the board's lock (the threads that then run may need the board: a trip
    from the service thread)."""
    import hw.hal.sim.spi as simspi

    bus = bench.sim.dac_bus if which == "dac" else bench.sim.adc_bus
    tx = (
        list(mcp4922.encode(DacWord(CHANNEL_A, 2048))) if which == "dac" else mcp3208.encode_read(3)
    )
    calls = []

    def lock_free_elsewhere() -> bool:
        got = []

        def other():
            ok = bench.sim.lock.acquire(timeout=1.0)
            got.append(ok)
            if ok:
                bench.sim.lock.release()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        return got[0]

    class FakeSelect:
        @staticmethod
        def select(r, w, x, timeout):
            calls.append((timeout, lock_free_elsewhere()))
            return [], [], []

    monkeypatch.setattr(simspi, "select", FakeSelect)
    parked = threading.Event()
    other = threading.Thread(target=parked.wait)  # another Python thread that could run
    other.start()
    try:
        for _ in range(5):
            bus.xfer2(list(tx))
    finally:
        parked.set()
        other.join()
    assert calls == [(0, True)] * 5
