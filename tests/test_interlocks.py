"""Reference hardware (issue 6, item 14): the e-stop loop and the charger detect sit in series with
the relay coil, so they cut without software; the GPIO lines only report them; a broken wire reads
"stop" / "charger present"; the self-test proves each element cuts and catches a bridged one."""

from __future__ import annotations

import pytest

from hw.control.loop import CommandRefused, OutputState
from hw.control.waveform import WaveformSpec
from hw.safety import Fault

SPEC = WaveformSpec(25.0, 20.0)  # gapless: current flows on every tick


def _frozen_after(rig, fault: str) -> tuple[float, list[tuple[float, float]]]:
    """Inject ``fault`` with the whole process frozen (no loop, no supervisor: only hardware
    acts); returns the injection time and (t, true current) every tick for 10 ms."""
    rig.all_stalled = True
    t0 = rig.clock.now()
    rig.sim.inject(fault)
    rows = []
    for _ in range(20):
        rig.step()
        rows.append((rig.clock.now() - t0, rig.sim.current_ua))
    return t0, rows


@pytest.mark.parametrize("fault", ["estop", "estop_wire_broken", "charger", "charger_wire_broken"])
def test_the_interlock_cuts_the_relay_with_no_software_running(running_rig, fault):
    """The process is frozen: the dead-man would hold the relay 25 ms. The interlock cuts the
    coil at once, so the current stops within the relay's release time."""
    rig = running_rig
    assert abs(rig.sim.current_ua) > 100.0
    _, rows = _frozen_after(rig, fault)
    release_s = rig.cfg.hardware.front_end.relay_release_ms / 1000.0
    assert all(abs(i) < 1e-9 for t, i in rows if t >= release_s)
    assert not rig.sim.relay_closed
    assert rig.sim.plant.last_kick_s + rig.sim.plant.deadman_s > rig.clock.now()  # not the dead-man
    # The line reports it: high = stop / charger present.
    lines = rig.board.lines
    pin = lines.estop_readback_pin if fault.startswith("estop") else lines.charger_pin
    assert pin.state is True


@pytest.mark.parametrize(
    ("fault", "code"),
    [("estop_wire_broken", Fault.ESTOP), ("charger_wire_broken", Fault.CHARGER)],
)
def test_a_broken_wire_is_a_stop_for_the_software_too(running_rig, fault, code):
    rig = running_rig
    rig.sim.inject(fault)
    assert rig.run_leased_until(lambda: rig.guard.tripped, 0.002)
    assert rig.guard.fault.code == code
    assert rig.loop.state == OutputState.TRIPPED


@pytest.mark.parametrize("fault", ["estop_wire_broken", "charger_wire_broken"])
def test_a_broken_wire_refuses_start(rig, fault):
    assert rig.post()["passed"]
    rig.sim.inject(fault)
    with pytest.raises(CommandRefused):
        rig.loop.start(SPEC, 100.0)
    assert rig.loop.start_blocker() is not None


def test_a_bridged_element_still_reports_and_software_still_stops(running_rig):
    """A bridged e-stop element only removes the hardware cut: the press is still reported and
    the loop trips ESTOP (the self-test is what finds the bridge)."""
    rig = running_rig
    rig.sim.inject("estop_bridged")
    rig.run_leased(0.01)
    assert rig.loop.state == OutputState.ON and rig.sim.relay_closed
    rig.sim.inject("estop")
    assert rig.run_leased_until(lambda: rig.guard.tripped, 0.002)
    assert rig.guard.fault.code == Fault.ESTOP


def test_with_a_bridged_element_a_press_is_cut_only_by_software(running_rig):
    """The hazard the self-test must catch: with the element bridged and the process frozen, a
    press no longer cuts before the dead-man does."""
    rig = running_rig
    rig.sim.inject("estop_bridged")
    _, rows = _frozen_after(rig, "estop")
    assert all(abs(i) > 100.0 for _, i in rows)


# --------------------------------------------------------------------------------------------
# the self-test proves both interlocks
# --------------------------------------------------------------------------------------------


def _between(events, kind: str) -> list[tuple[float, str, object]]:
    """Board events between ``kind`` going True and going False (the first such window)."""
    on = next(t for t, k, v in events if k == kind and v is True)
    off = next(t for t, k, v in events if k == kind and v is False and t >= on)
    return [e for e in events if on <= e[0] <= off]


def test_post_opens_each_interlock_and_sees_the_relay_drop_and_the_line_report(rig):
    result = rig.post()
    assert result["passed"], result
    steps = {s["step"]: s for s in result["steps"]}
    tol = rig.cfg.hardware.post.zero_tolerance_ua
    check = rig.cfg.hardware.post.check_current_ua
    for name, test_kind in (
        ("estop_interlock", "estop_test"),
        ("charger_interlock", "charger_test"),
    ):
        s = steps[name]
        assert abs(s["before_ua"]) > 0.9 * check and abs(s["again_ua"]) > 0.9 * check
        assert abs(s["after_ua"]) <= tol
        window = _between(rig.sim.events, test_kind)
        # The relay dropped while the test line was high, with enable high throughout.
        assert any(k == "relay" and v is False for _, k, v in window)
        assert not any(k == "enable" for _, k, _v in window)
    # The e-stop test is not a press: no trip, and the loop is ready.
    assert not rig.guard.tripped and rig.guard.post_valid
    assert not rig.board.lines.estop_test.value and not rig.board.lines.charger_test.value


@pytest.mark.parametrize(
    ("fault", "step"),
    [("estop_bridged", "estop_interlock"), ("charger_bridged", "charger_interlock")],
)
def test_post_catches_a_bridged_interlock(rig, fault, step):
    rig.sim.inject(fault)
    result = rig.post()
    assert not result["passed"]
    assert result["failed_step"] == step, result
    assert "bridged" in result["reason"]
    assert rig.guard.fault.code == Fault.POST_FAILED and not rig.guard.post_valid
    with pytest.raises(CommandRefused):
        rig.loop.start(SPEC, 100.0)
    rig.run(0.002)
    assert not rig.sim.enable_high and not rig.sim.relay_closed


@pytest.mark.parametrize(
    ("which", "step"), [("estop", "estop_interlock"), ("charger", "charger_interlock")]
)
def test_post_fails_when_the_line_does_not_report_the_interlock(rig, monkeypatch, which, step):
    """A read-back stuck low (shorted to ground) would hide a press or a charger from software."""
    sim = rig.sim
    pin = sim.pin_numbers.estop if which == "estop" else sim.pin_numbers.charger
    real = sim._drive_input

    def stuck_low(number, high):
        real(number, False if number == pin else high)

    monkeypatch.setattr(sim, "_drive_input", stuck_low)
    result = rig.post()
    assert not result["passed"]
    assert result["failed_step"] == step, result
    assert "does not report" in result["reason"]


def test_a_press_during_the_estop_interlock_test_is_not_lost(rig):
    def press_during_test(r):
        if "estop" not in r.sim.active_faults and r.board.lines.estop_test.value:
            r.sim.inject("estop")

    rig.on_tick = press_during_test
    rig.loop.run_post()
    rig.run(0.3)
    assert rig.guard.fault is not None and rig.guard.fault.code == Fault.ESTOP
    assert not rig.guard.post_valid
    assert not rig.board.lines.estop_test.value
    assert not rig.sim.enable_high


def test_post_cannot_pass_with_a_charger_connected(rig):
    """With the charger in the coil chain the relay cannot close, so the self-test cannot drive
    its test load: it is refused, with what to do, and nothing is latched or closed."""
    rig.sim.inject("charger")
    rig.step()
    with pytest.raises(CommandRefused, match="charger"):
        rig.loop.run_post()
    rig.run(0.1)
    assert rig.guard.fault is None and not rig.guard.post_valid
    assert not rig.sim.relay_closed
