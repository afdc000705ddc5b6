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

The test drives the board only through a narrow :class:`PostPort` the loop gives it (the loop's
implementation: hw.control.postport); it hands back the calibration it measures through the port
as it goes (the later steps drive through it) and reports its result there. It imports nothing
from hw.control.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class PostPort(Protocol):
    """What the self-test may do. Every call holds the bus lock as needed; currents in uA."""

    cfg: Any  # the validated hw.config.Config
    lines: Any  # the board's lines (hw.hal.lines): relay enable, test lines, read-backs

    def now(self) -> float: ...  # the loop's clock (s)

    def begin(self) -> int: ...  # the guard's POST epoch (Guard.begin_post)

    def confirm(self, epoch: int) -> bool: ...  # no trip since begin (Guard.confirm_post)

    def fail(self, detail: str) -> None: ...  # trip POST_FAILED through the guard

    def enable(self, relay: bool = True) -> bool: ...  # the guard's one guarded enable

    def set_dac(self, code: int) -> None: ...  # DAC A, a raw code

    def set_dac_ua(self, ua: float) -> None: ...  # DAC A for a true current (the calibration)

    def set_threshold(self, ua: float) -> None: ...  # the comparator threshold (DAC B)

    def mean_current(self, n: int) -> float: ...  # mean of n shunt conversions (uA)

    def read_mean(self, channel: int, n: int) -> float: ...  # mean of n codes of a channel

    def read_codes(self, channel: int, n: int) -> list[int]: ...  # n raw codes of a channel

    def kick(self) -> None: ...  # toggle the dead-man line once

    def set_adc_offset(self, codes: float) -> None: ...  # the ADC's zero offset, measured

    def set_calibration(self, gain: float, offset_ua: float) -> None: ...  # the stage's

    def report(self, result: dict | None) -> None: ...  # the result (None: being run)

    def event(self, kind: str, **data) -> None: ...  # an event in the loop's log


class PostFailure(Exception):
    pass


def _enable(port: PostPort, relay: bool = True) -> None:
    """Every switch-on in the self-test goes through the guard's one guarded enable."""
    if not port.enable(relay=relay):
        raise PostFailure("a fault was latched during the self-test")


def _rearm(port: PostPort) -> Iterator[float]:
    lines = port.lines
    lines.latch_rearm.on()
    yield 0.0005
    lines.latch_rearm.off()
    yield 0.0005


def _restore_and_rearm(port: PostPort, after: str) -> Iterator[float]:
    """DAC A to zero, the comparator threshold back to its limit, re-arm: the latch must clear."""
    port.set_dac(port.cfg.hardware.front_end.dac_zero_code)
    port.set_threshold(port.cfg.limits.hw_overcurrent_ua)
    yield from _kick_for(port, 0.001)
    yield from _rearm(port)
    if port.lines.latch_pin.state:
        raise PostFailure(f"the hardware latch does not re-arm after {after}")


def _kick_for(port: PostPort, seconds: float) -> Iterator[float]:
    """Keep the dead-man alive for ``seconds`` of clock time (one toggle per tick).

    Counted on the clock, not in ticks: after a late tick the runner catches up with ticks back
    to back, and the relay, the comparator and the stage settle in time, not in ticks (a count
    of ticks under host load read the current before the latch had cut it)."""
    t_end = port.now() + seconds - 1e-9
    while True:
        port.kick()
        yield 0.0
        if port.now() >= t_end:
            return


def _interlock_step(port: PostPort, step: str, test_line, readback, what: str, note):
    """Current flows through the closed relay; the test line opens one element of the coil's
    series chain: its read-back must report it and the relay must drop with enable high and the
    kicks alive (nothing else can cut). Then the line drops, the read-back clears, the relay
    closes again. A bridged element fails here."""
    fe, post = port.cfg.hardware.front_end, port.cfg.hardware.post
    operate_s = fe.relay_operate_ms / 1000.0
    release_s = fe.relay_release_ms / 1000.0
    _enable(port)
    yield from _kick_for(port, operate_s + 0.001)
    flowing = port.mean_current(4)
    if abs(flowing) < post.check_current_ua * 0.5:
        raise PostFailure(f"no current through the relay before the {what} test: {flowing:.1f}")
    test_line.on()
    try:
        reported = bool(readback.state)
        yield from _kick_for(port, release_s + 0.001)
        after = port.mean_current(8)
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
    yield from _kick_for(port, operate_s + 0.001)
    back = port.mean_current(4)
    if abs(back) < post.check_current_ua * 0.5:
        raise PostFailure(f"the relay does not close again after the {what} test: {back:.1f}")
    note(step, before_ua=flowing, after_ua=after, again_ua=back)


def post_sequence(port: PostPort) -> Iterator[float]:
    """The self-test as a generator of waits (s). Trips POST_FAILED on any failed step."""
    cfg = port.cfg
    fe, post = cfg.hardware.front_end, cfg.hardware.post
    ch = cfg.hardware.adc_channels
    lines = port.lines
    result: dict = {"passed": False, "steps": []}
    # The relay's datasheet maxima: coil on -> contacts settled, coil off -> contacts apart.
    operate_s = fe.relay_operate_ms / 1000.0
    release_s = fe.relay_release_ms / 1000.0
    port.report(None)
    epoch = port.begin()
    step = "start"

    def note(name: str, **figures) -> None:
        result["steps"].append({"step": name, **{k: round(v, 3) for k, v in figures.items()}})

    try:
        lines.output_enable.off()
        lines.test_load.off()
        _enable(port, relay=False)  # the DAC may drive (the relay is still open)
        port.set_dac(fe.dac_zero_code)
        yield 0.002

        step = "reference"
        ref = port.read_mean(ch.reference, 4)
        if abs(ref - fe.reference_code) > fe.reference_tolerance_codes:
            raise PostFailure(f"reference reads {ref:.0f}, expected {fe.reference_code}")
        rail_v = port.read_mean(ch.compliance_rail, 4) * fe.rail_v_per_code
        if abs(rail_v - fe.rail_nominal_v) > fe.rail_nominal_v * fe.rail_tolerance_pct / 100:
            raise PostFailure(f"compliance rail {rail_v:.2f} V, expected {fe.rail_nominal_v} V")
        note("reference", reference_code=ref, rail_v=rail_v)

        step = "zero"
        port.set_adc_offset(0.0)
        codes = port.read_codes(ch.current, 32)
        offset = sum(codes) / len(codes) - fe.adc_zero_code
        zero_ua = offset * fe.adc_ua_per_code
        if abs(zero_ua) > post.zero_tolerance_ua:
            raise PostFailure(f"{zero_ua:.1f} uA flows with the output disabled")
        port.set_adc_offset(offset)
        note("zero", offset_codes=offset)

        step = "latch_rearm"
        port.set_threshold(cfg.limits.hw_overcurrent_ua)
        yield 0.001
        yield from _rearm(port)
        if lines.latch_pin.state:
            raise PostFailure("the hardware latch does not re-arm")
        note("latch_rearm")

        step = "calibration"
        lines.test_load.on()
        _enable(port)
        port.set_calibration(1.0, 0.0)
        yield from _kick_for(port, operate_s + 0.001)  # the relay closes; its contacts settle
        measured, volts = {}, {}
        for sign in (1.0, -1.0):
            want = sign * post.check_current_ua
            port.set_dac_ua(want)
            yield from _kick_for(port, 0.004)
            measured[sign] = port.mean_current(16)
            volts[sign] = (
                port.read_mean(ch.electrode_voltage, 16) - 2048
            ) * fe.electrode_v_per_code
            yield from _kick_for(port, 0.0005)
        port.set_dac(fe.dac_zero_code)
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
        port.set_calibration(gain, offset_ua)
        note(
            "calibration",
            plus_ua=measured[1.0],
            minus_ua=measured[-1.0],
            gain=gain,
            offset_ua=offset_ua,
            ohm_ua=i_ohm_ua,
        )

        step = "latch_trip"
        port.set_dac_ua(post.check_current_ua)
        yield from _kick_for(port, 0.002)
        # The comparator's scale against the current just proven by Ohm's law: a threshold 15 %
        # above it must hold, 15 % below it must trip (a wrong threshold_ua_per_code fails one).
        i_now = port.mean_current(8)
        port.set_threshold(abs(i_now) * 1.15)
        yield from _kick_for(port, 0.002)
        if lines.latch_pin.state:
            raise PostFailure(
                f"the hardware latch tripped at a threshold set to {abs(i_now) * 1.15:.0f} uA "
                f"while {abs(i_now):.0f} uA flows: threshold_ua_per_code in the board file is wrong"
            )
        port.set_threshold(abs(i_now) * 0.85)
        yield from _kick_for(port, 0.001 + release_s)  # the latch opens the coil; contacts part
        tripped = bool(lines.latch_pin.state)
        i_after = port.mean_current(4)
        if not tripped:
            raise PostFailure(
                f"the hardware latch did not trip with {abs(i_now):.0f} uA over a threshold set to "
                f"{abs(i_now) * 0.85:.0f} uA (dead comparator, or threshold_ua_per_code wrong)"
            )
        if abs(i_after) > post.zero_tolerance_ua:
            raise PostFailure(f"the latch tripped but {i_after:.1f} uA still flows")
        yield from _restore_and_rearm(port, "a trip")
        note("latch_trip", current_after_ua=i_after)

        step = "deadman"
        port.set_dac_ua(post.check_current_ua)
        yield from _kick_for(port, operate_s + 0.001)  # re-armed: the relay closes again
        flowing = port.mean_current(4)
        if abs(flowing) < post.check_current_ua * 0.5:
            raise PostFailure(
                f"no current through the relay before the dead-man test: {flowing:.1f}"
            )
        # No kicks: the monostable must drop the coil, and the contacts part within release.
        wait_ms = fe.deadman_ms + fe.relay_release_ms + 2.0
        yield wait_ms / 1000.0
        after = port.mean_current(4)
        if abs(after) > post.zero_tolerance_ua:
            raise PostFailure(
                f"{after:.1f} uA still flows {wait_ms:.0f} ms after the kicks stopped"
            )
        note("deadman", before_ua=flowing, after_ua=after)

        step = "dac_shutdown"
        _enable(port)
        yield from _kick_for(port, operate_s + 0.001)  # kicks again: the relay closes
        flowing = port.mean_current(4)
        lines.dac_shutdown.off()  # the hardware path to zero, without SPI
        yield from _kick_for(port, 0.002)
        after = port.mean_current(4)
        _enable(port)
        if abs(flowing) < post.check_current_ua * 0.5 or abs(after) > post.zero_tolerance_ua:
            raise PostFailure(
                f"the DAC /SHDN line did not cut the current ({flowing:.1f} -> {after:.1f} uA)"
            )
        # Channel B shut down with /SHDN: the comparator latch tripped; restore and re-arm.
        yield from _restore_and_rearm(port, "the /SHDN test")
        port.set_dac_ua(post.check_current_ua)
        note("dac_shutdown", before_ua=flowing, after_ua=after)

        step = "relay"
        yield from _kick_for(port, operate_s + 0.001)  # re-armed: the relay closes again
        flowing = port.mean_current(4)
        if abs(flowing) < post.check_current_ua * 0.5:
            raise PostFailure(f"no current through the relay before the relay test: {flowing:.1f}")
        lines.output_enable.off()
        # Kicks alive, enable low: only the relay can cut, within its release time.
        yield from _kick_for(port, max(0.004, release_s + 0.001))
        leak = port.mean_current(8)
        if abs(leak) > post.zero_tolerance_ua:
            raise PostFailure(f"{leak:.1f} uA flows with the relay commanded open (welded?)")
        note("relay", before_ua=flowing, leak_ua=leak)

        # The e-stop and the charger cut the relay coil in hardware (docs/hardware.md); their
        # test lines open each element of the coil's chain as a press / a charger would.
        for step, test_line, readback, what in (
            ("estop_interlock", lines.estop_test, lines.estop_readback_pin, "e-stop"),
            ("charger_interlock", lines.charger_test, lines.charger_pin, "charger"),
        ):
            yield from _interlock_step(port, step, test_line, readback, what, note)

        lines.output_enable.off()
        yield from _kick_for(port, release_s + 0.001)  # the relay opens before the load is left
        port.set_dac(fe.dac_zero_code)
        lines.test_load.off()
        step = "confirm"
        if not port.confirm(epoch):  # under the guard's lock: no trip since the start
            raise PostFailure("a fault was latched during the self-test")
        result["passed"] = True
        port.report(result)
        port.event("post", passed=True)
    except PostFailure as e:
        result["failed_step"] = step
        result["reason"] = str(e)
        port.report(result)
        port.event("post", passed=False, step=step, reason=str(e))
        port.fail(f"{step}: {e}")
    finally:
        lines.output_enable.off()
        lines.test_load.off()
        lines.estop_test.off()
        lines.charger_test.off()
