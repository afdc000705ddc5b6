"""Power-on self-test (POST): proves every layer of the safety chain before any output.

The test runs inside the control loop's ticks (a generator that yields how long to wait), so it
owns the bus like the loop does and runs the same in simulated and real time. All driving goes into
the internal test load, never the electrodes. Steps:

1. ADC reference channel and compliance rail in range.
2. Output disabled: nothing flows; the ADC's zero offset is measured.
3. Comparator threshold set (DAC B) and the hardware latch re-armed: it must clear.
4. +/- check current into the test load through the relay: read back within tolerance; this gives
   the stage's gain and offset (the calibration the loop uses). The independent reference: the
   electrode voltage across the known test load must agree with the current read (V = I x R with
   ``test_load_ohm``), so a wrong scale factor in the board file fails here.
5. Hardware latch: a threshold 15 % above the test current must hold and 15 % below it must trip
   and cut the current (this checks the comparator's scale); restored and re-armed -> it clears.
6. Dead-man: kicks stop while enabled -> the relay must drop within the monostable time.
7. DAC /SHDN line low while driving -> the current must stop (the path to zero without SPI).
8. Relay: enable low while the DAC drives -> no current may flow (a welded relay fails here).
9. E-stop interlock: the ``estop_test`` line opens the e-stop loop in the relay coil's series
   chain as a press does: the e-stop line must report it and the relay must drop with enable high
   and the kicks alive (a bridged element fails here); then the line clears and the relay closes.
10. Charger interlock: the same with ``charger_test``, which pulls the charger detect as a
    charger does.

Every judgement of current waits the relay's datasheet operate (``relay_operate_ms``) or release
(``relay_release_ms``) time after the relay was told to close or open.

A failure trips ``POST_FAILED`` with the step and the figures; a pass sets ``guard.post_valid``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from hw.hal.chips.mcp4922 import CHANNEL_B, DacWord
from hw.safety import Fault

if TYPE_CHECKING:
    from hw.control.loop import ControlLoop


class PostFailure(Exception):
    pass


def _enable(loop: ControlLoop, relay: bool = True) -> None:
    """Every switch-on in the self-test goes through the guard's one guarded enable."""
    if not loop.guard.enable(relay=relay):
        raise PostFailure("a fault was latched during the self-test")


def _mean_current(loop: ControlLoop, n: int) -> float:
    total = 0.0
    with loop.board.bus_lock:
        for _ in range(n):
            total += loop.read_current()[1]
    return total / n


def _read(loop: ControlLoop, channel: int, n: int = 4) -> float:
    with loop.board.bus_lock:
        return sum(loop.board.adc.read(channel) for _ in range(n)) / n


def _set_dac(loop: ControlLoop, code: int) -> None:
    with loop.board.bus_lock:
        loop.board.dac.write_a(code)


def _set_threshold(loop: ControlLoop, ua: float) -> None:
    fe = loop.cfg.hardware.front_end
    code = max(1, min(4095, round(ua / fe.threshold_ua_per_code)))
    with loop.board.bus_lock:
        loop.board.dac.write(DacWord(CHANNEL_B, code))


def _rearm(loop: ControlLoop) -> Iterator[float]:
    lines = loop.board.lines
    lines.latch_rearm.on()
    yield 0.0005
    lines.latch_rearm.off()
    yield 0.0005


def _restore_and_rearm(loop: ControlLoop, after: str) -> Iterator[float]:
    """DAC A to zero, the comparator threshold back to its limit, re-arm: the latch must clear."""
    _set_dac(loop, loop.cfg.hardware.front_end.dac_zero_code)
    _set_threshold(loop, loop.cfg.limits.hw_overcurrent_ua)
    yield from _kick_for(loop, 0.001)
    yield from _rearm(loop)
    if loop.board.lines.latch_pin.state:
        raise PostFailure(f"the hardware latch does not re-arm after {after}")


def _kick_for(loop: ControlLoop, seconds: float) -> Iterator[float]:
    """Keep the dead-man alive for ``seconds`` of clock time (one toggle per tick).

    Counted on the clock, not in ticks: after a late tick the runner catches up with ticks back
    to back, and the relay, the comparator and the stage settle in time, not in ticks (a count
    of ticks under host load read the current before the latch had cut it)."""
    t_end = loop.clock.now() + seconds - 1e-9
    while True:
        loop.kick_once()
        yield 0.0
        if loop.clock.now() >= t_end:
            return


def _interlock_step(loop: ControlLoop, step: str, test_line, readback, what: str, note):
    """Current flows through the closed relay; the test line opens one element of the coil's
    series chain: its read-back must report it and the relay must drop with enable high and the
    kicks alive (nothing else can cut). Then the line drops, the read-back clears, the relay
    closes again. A bridged element fails here."""
    fe, post = loop.cfg.hardware.front_end, loop.cfg.hardware.post
    operate_s = fe.relay_operate_ms / 1000.0
    release_s = fe.relay_release_ms / 1000.0
    _enable(loop)
    yield from _kick_for(loop, operate_s + 0.001)
    flowing = _mean_current(loop, 4)
    if abs(flowing) < post.check_current_ua * 0.5:
        raise PostFailure(f"no current through the relay before the {what} test: {flowing:.1f}")
    test_line.on()
    try:
        reported = bool(readback.state)
        yield from _kick_for(loop, release_s + 0.001)
        after = _mean_current(loop, 8)
        reported = reported and bool(readback.state)
    finally:
        test_line.off()
    if not reported:
        raise PostFailure(f"the {what} line does not report its interlock opened")
    if abs(after) > post.zero_tolerance_ua:
        raise PostFailure(
            f"{after:.1f} uA still flows with the {what} interlock open (bridged?): "
            f"the {what} would not cut the output without software"
        )
    if readback.state:
        # Still open with the test line low: a real press or charger. The loop's own check of
        # that line ends the self-test with its fault; nothing here decides it.
        return
    yield from _kick_for(loop, operate_s + 0.001)
    back = _mean_current(loop, 4)
    if abs(back) < post.check_current_ua * 0.5:
        raise PostFailure(f"the relay does not close again after the {what} test: {back:.1f}")
    note(step, before_ua=flowing, after_ua=after, again_ua=back)


def post_sequence(loop: ControlLoop) -> Iterator[float]:
    """The self-test as a generator of waits (s). Trips POST_FAILED on any failed step."""
    cfg = loop.cfg
    fe, post = cfg.hardware.front_end, cfg.hardware.post
    ch = cfg.hardware.adc_channels
    lines = loop.board.lines
    result: dict = {"passed": False, "steps": []}
    # The relay's datasheet maxima: coil on -> contacts settled, coil off -> contacts apart.
    operate_s = fe.relay_operate_ms / 1000.0
    release_s = fe.relay_release_ms / 1000.0
    loop.post_result = None
    epoch = loop.guard.begin_post()
    step = "start"

    def note(name: str, **figures) -> None:
        result["steps"].append({"step": name, **{k: round(v, 3) for k, v in figures.items()}})

    try:
        lines.output_enable.off()
        lines.test_load.off()
        _enable(loop, relay=False)  # the DAC may drive (the relay is still open)
        _set_dac(loop, fe.dac_zero_code)
        yield 0.002

        step = "reference"
        ref = _read(loop, ch.reference)
        if abs(ref - fe.reference_code) > fe.reference_tolerance_codes:
            raise PostFailure(f"reference reads {ref:.0f}, expected {fe.reference_code}")
        rail_v = _read(loop, ch.compliance_rail) * fe.rail_v_per_code
        if abs(rail_v - fe.rail_nominal_v) > fe.rail_nominal_v * fe.rail_tolerance_pct / 100:
            raise PostFailure(f"compliance rail {rail_v:.2f} V, expected {fe.rail_nominal_v} V")
        note("reference", reference_code=ref, rail_v=rail_v)

        step = "zero"
        loop.adc_offset_codes = 0.0
        with loop.board.bus_lock:
            codes = [loop.board.adc.read(ch.current) for _ in range(32)]
        offset = sum(codes) / len(codes) - fe.adc_zero_code
        zero_ua = offset * fe.adc_ua_per_code
        if abs(zero_ua) > post.zero_tolerance_ua:
            raise PostFailure(f"{zero_ua:.1f} uA flows with the output disabled")
        loop.adc_offset_codes = offset
        note("zero", offset_codes=offset)

        step = "latch_rearm"
        _set_threshold(loop, cfg.limits.hw_overcurrent_ua)
        yield 0.001
        yield from _rearm(loop)
        if lines.latch_pin.state:
            raise PostFailure("the hardware latch does not re-arm")
        note("latch_rearm")

        step = "calibration"
        lines.test_load.on()
        _enable(loop)
        loop.cal_gain, loop.cal_offset_ua = 1.0, 0.0
        yield from _kick_for(loop, operate_s + 0.001)  # the relay closes; its contacts settle
        measured, volts = {}, {}
        for sign in (1.0, -1.0):
            want = sign * post.check_current_ua
            _set_dac(loop, loop._to_code(want))
            yield from _kick_for(loop, 0.004)
            measured[sign] = _mean_current(loop, 16)
            volts[sign] = (_read(loop, ch.electrode_voltage, 16) - 2048) * fe.electrode_v_per_code
            yield from _kick_for(loop, 0.0005)
        _set_dac(loop, fe.dac_zero_code)
        for sign, m in measured.items():
            want = sign * post.check_current_ua
            tol = max(post.tolerance_ua, abs(want) * post.tolerance_pct / 100)
            if abs(m - want) > tol:
                raise PostFailure(
                    f"drove {want:+.0f} uA into the test load, read {m:+.1f} uA "
                    f"(tolerance {tol:.0f})"
                )
        # The independent reference: the test load is a known resistor, so Ohm's law gives the
        # current from the electrode voltage (CH1 through its divider), a path that shares no scale
        # factor with the DAC or the shunt channel. Half the +/- difference cancels CH1's offset.
        # Tolerance: post.tolerance_pct of the current (the test resistor 1 %, the CH1 divider 1 %,
        # CH1 quantisation 0.5 % at 200 uA into 4.7 kOhm) plus one CH1 code worth of current.
        i_sense_ua = (measured[1.0] - measured[-1.0]) / 2
        i_ohm_ua = (volts[1.0] - volts[-1.0]) / 2 / fe.test_load_ohm * 1e6
        tol = (
            abs(i_ohm_ua) * post.tolerance_pct / 100
            + fe.electrode_v_per_code / fe.test_load_ohm * 1e6
        )
        if abs(i_sense_ua - i_ohm_ua) > tol:
            raise PostFailure(
                f"the current channel reads {i_sense_ua:.1f} uA but the test load's voltage gives "
                f"{i_ohm_ua:.1f} uA (V = I x {fe.test_load_ohm:g} Ohm, tolerance {tol:.1f}): a "
                "scale factor in the board file is wrong; re-run the calibration step"
            )
        gain = (measured[1.0] - measured[-1.0]) / (2 * post.check_current_ua)
        offset_ua = (measured[1.0] + measured[-1.0]) / 2
        loop.cal_gain, loop.cal_offset_ua = gain, offset_ua
        note(
            "calibration",
            plus_ua=measured[1.0],
            minus_ua=measured[-1.0],
            gain=gain,
            offset_ua=offset_ua,
            ohm_ua=i_ohm_ua,
        )

        step = "latch_trip"
        _set_dac(loop, loop._to_code(post.check_current_ua))
        yield from _kick_for(loop, 0.002)
        # The comparator's scale against the current just proven by Ohm's law: a threshold 15 %
        # above it must hold, 15 % below it must trip (a wrong threshold_ua_per_code fails one).
        i_now = _mean_current(loop, 8)
        _set_threshold(loop, abs(i_now) * 1.15)
        yield from _kick_for(loop, 0.002)
        if lines.latch_pin.state:
            raise PostFailure(
                f"the hardware latch tripped at a threshold set to {abs(i_now) * 1.15:.0f} uA "
                f"while {abs(i_now):.0f} uA flows: threshold_ua_per_code in the board file is wrong"
            )
        _set_threshold(loop, abs(i_now) * 0.85)
        yield from _kick_for(loop, 0.001 + release_s)  # the latch opens the coil; contacts part
        tripped = bool(lines.latch_pin.state)
        i_after = _mean_current(loop, 4)
        if not tripped:
            raise PostFailure(
                f"the hardware latch did not trip with {abs(i_now):.0f} uA over a threshold set to "
                f"{abs(i_now) * 0.85:.0f} uA (dead comparator, or threshold_ua_per_code wrong)"
            )
        if abs(i_after) > post.zero_tolerance_ua:
            raise PostFailure(f"the latch tripped but {i_after:.1f} uA still flows")
        yield from _restore_and_rearm(loop, "a trip")
        note("latch_trip", current_after_ua=i_after)

        step = "deadman"
        _set_dac(loop, loop._to_code(post.check_current_ua))
        yield from _kick_for(loop, operate_s + 0.001)  # re-armed: the relay closes again
        flowing = _mean_current(loop, 4)
        if abs(flowing) < post.check_current_ua * 0.5:
            raise PostFailure(
                f"no current through the relay before the dead-man test: {flowing:.1f}"
            )
        # No kicks: the monostable must drop the coil, and the contacts part within release.
        wait_ms = fe.deadman_ms + fe.relay_release_ms + 2.0
        yield wait_ms / 1000.0
        after = _mean_current(loop, 4)
        if abs(after) > post.zero_tolerance_ua:
            raise PostFailure(
                f"{after:.1f} uA still flows {wait_ms:.0f} ms after the kicks stopped"
            )
        note("deadman", before_ua=flowing, after_ua=after)

        step = "dac_shutdown"
        _enable(loop)
        yield from _kick_for(loop, operate_s + 0.001)  # kicks again: the relay closes
        flowing = _mean_current(loop, 4)
        lines.dac_shutdown.off()  # the hardware path to zero, without SPI
        yield from _kick_for(loop, 0.002)
        after = _mean_current(loop, 4)
        _enable(loop)
        if abs(flowing) < post.check_current_ua * 0.5 or abs(after) > post.zero_tolerance_ua:
            raise PostFailure(
                f"the DAC /SHDN line did not cut the current ({flowing:.1f} -> {after:.1f} uA)"
            )
        # Channel B shut down with /SHDN: the comparator latch tripped; restore and re-arm.
        yield from _restore_and_rearm(loop, "the /SHDN test")
        _set_dac(loop, loop._to_code(post.check_current_ua))
        note("dac_shutdown", before_ua=flowing, after_ua=after)

        step = "relay"
        yield from _kick_for(loop, operate_s + 0.001)  # re-armed: the relay closes again
        flowing = _mean_current(loop, 4)
        if abs(flowing) < post.check_current_ua * 0.5:
            raise PostFailure(f"no current through the relay before the relay test: {flowing:.1f}")
        lines.output_enable.off()
        # Kicks alive, enable low: only the relay can cut, within its release time.
        yield from _kick_for(loop, max(0.004, release_s + 0.001))
        leak = _mean_current(loop, 8)
        if abs(leak) > post.zero_tolerance_ua:
            raise PostFailure(f"{leak:.1f} uA flows with the relay commanded open (welded?)")
        note("relay", before_ua=flowing, leak_ua=leak)

        # The e-stop and the charger cut the relay coil in hardware (docs/hardware.md); their
        # test lines open each element of the coil's chain as a press / a charger would.
        for step, test_line, readback, what in (
            ("estop_interlock", lines.estop_test, lines.estop_readback_pin, "e-stop"),
            ("charger_interlock", lines.charger_test, lines.charger_pin, "charger"),
        ):
            yield from _interlock_step(loop, step, test_line, readback, what, note)

        lines.output_enable.off()
        yield from _kick_for(loop, release_s + 0.001)  # the relay opens before the load is left
        _set_dac(loop, fe.dac_zero_code)
        lines.test_load.off()
        step = "confirm"
        if not loop.guard.confirm_post(epoch):  # under the guard's lock: no trip since the start
            raise PostFailure("a fault was latched during the self-test")
        result["passed"] = True
        loop.post_result = result
        loop._event("post", passed=True)
    except PostFailure as e:
        result["failed_step"] = step
        result["reason"] = str(e)
        loop.post_result = result
        loop._event("post", passed=False, step=step, reason=str(e))
        loop.guard.trip(Fault.POST_FAILED, f"{step}: {e}")
    finally:
        lines.output_enable.off()
        lines.test_load.off()
        lines.estop_test.off()
        lines.charger_test.off()
