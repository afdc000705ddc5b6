"""GPIO lines on gpiozero's MockFactory: output enable is low from the first instant to the last."""

from __future__ import annotations

import pytest
from gpiozero import DigitalInputDevice
from gpiozero.exc import GPIOPinInUse
from gpiozero.pins.mock import MockFactory

from hw.config import load_config
from hw.hal.lines import Lines
from hw.safety import Fault


@pytest.fixture
def pins():
    return load_config(env={}).hardware.pins


def states(pin) -> list[bool]:
    return [s.state for s in pin.states]


def test_enable_is_low_from_construction(pins):
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    try:
        pin = factory.pin(pins.output_enable)
        assert pin is lines.output_enable.pin
        assert states(pin)[0] is False
        assert True not in states(pin)
        assert pin.function == "output"
        for dev in (
            lines.deadman_kick,
            lines.latch_rearm,
            lines.test_load,
            lines.buzzer,
            lines.output_led,
            lines.estop_test,
            lines.charger_test,
        ):
            assert True not in states(dev.pin)
    finally:
        lines.close()


def test_enable_is_low_from_construction_on_the_sim_board(rig):
    pin = rig.board.lines.output_enable.pin
    assert states(pin)[0] is False
    assert True not in states(pin)
    assert not rig.sim.enable_high


def test_estop_is_normally_closed_and_a_broken_wire_means_stop(pins):
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    try:
        pin = lines.estop_readback_pin
        assert pin.pull == "up"
        # Nothing holds the line low (wire broken or contact open): the pull-up reads "stop".
        assert pin.state is True
        assert lines.estop_pressed() and lines.estop_pin.state
        pin.drive_low()  # the closed loop of a released button
        assert not lines.estop_pressed() and not lines.estop_pin.state
        pin.drive_high()  # pressed: the loop opens
        assert lines.estop_pressed() and lines.estop_pin.state
    finally:
        lines.close()


def test_a_broken_charger_wire_reads_charger_present(pins):
    """Issue 6 item 14: the charger input had a pull-down, so a broken wire read "no charger".
    Now the detect circuit must actively pull the line low to say "no charger"."""
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    try:
        pin = lines.charger_pin
        assert pin.pull == "up"
        assert pin.state is True  # nothing drives it: broken wire or dead detect circuit
        pin.drive_low()  # the detect circuit says: no charger
        assert pin.state is False
        pin.drive_high()
        assert pin.state is True  # loop.py reads True as "charger present"
    finally:
        lines.close()


def test_latch_input_is_not_pulled_up(pins):
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    try:
        assert lines.latch_pin.pull != "up"
    finally:
        lines.close()


def test_estop_test_pulse_is_not_a_press_but_keeps_start_refused(pins):
    """While the self-test's estop_test line holds the loop open, the loop's poll (estop_pin)
    does not read it as a press; start stays refused (estop_pressed) and a press that outlasts
    the pulse is seen as soon as the line drops."""
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    try:
        rb = lines.estop_readback_pin
        rb.drive_low()
        lines.estop_test.on()
        assert not lines.estop_pin.state and lines.estop_pressed()  # test line alone
        rb.drive_high()  # what the test line does to the loop (or a press during the test)
        assert not lines.estop_pin.state and lines.estop_pressed()
        lines.estop_test.off()
        assert lines.estop_pin.state and lines.estop_pressed()  # still open: seen at once
        rb.drive_low()
        assert not lines.estop_pin.state and not lines.estop_pressed()
    finally:
        lines.close()


def test_enable_low_after_a_trip(running_rig):
    rig = running_rig
    pin = rig.board.lines.output_enable.pin
    assert states(pin)[-1] is True
    rig.guard.trip(Fault.ESTOP, "test")
    assert states(pin)[-1] is False
    assert pin.state is False
    rig.run(0.05)
    assert states(pin)[-1] is False


def test_enable_low_after_board_close(running_rig):
    rig = running_rig
    pin = rig.board.lines.output_enable.pin
    assert pin.state is True
    rig.board.close()
    assert states(pin)[-1] is False
    assert pin.state is False
    assert rig.board.lines.output_enable.closed
    # The DAC was shut down too on the way out.
    assert rig.sim.plant.i_command_ua == 0.0
    rig.board.close()  # twice is safe
    assert pin.state is False


def test_lines_close_twice_is_safe(pins):
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    lines.output_enable.on()
    lines.output_led.on()
    lines.close()
    lines.close()
    assert states(factory.pin(pins.output_enable))[-1] is False
    assert all(d.closed for d in lines._devices)


def test_close_drives_enable_low_before_releasing_anything(pins):
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    order = []
    enable_pin = factory.pin(pins.output_enable)
    for dev in lines._devices:
        real_close = dev.close

        def close(dev=dev, real_close=real_close):
            order.append((dev.pin.info.name if dev.pin else None, enable_pin.state))
            real_close()

        object.__setattr__(dev, "close", close)
    lines.output_enable.on()
    lines.close()
    assert order, "no device was closed"
    # Every device was released with the enable already low.
    assert all(enable_state is False for _, enable_state in order)


def test_failed_construction_leaves_enable_low_and_released(pins):
    """If a later line cannot be claimed (here: a pin already in use), the enable line that was
    created first is driven low and released again."""
    factory = MockFactory()
    blocker = factory.pin(pins.charger)
    holder = DigitalInputDevice(pins.charger, pin_factory=factory)
    try:
        with pytest.raises(GPIOPinInUse):
            Lines(pins, pin_factory=factory)
        enable_pin = factory.pin(pins.output_enable)
        assert True not in states(enable_pin)
        # Released: a fresh Lines can claim the enable again once the blocker is gone.
    finally:
        holder.close()
    assert blocker is factory.pin(pins.charger)
    lines = Lines(pins, pin_factory=factory)
    lines.close()


def test_all_outputs_low(pins):
    factory = MockFactory()
    lines = Lines(pins, pin_factory=factory)
    try:
        for dev in (lines.output_enable, lines.output_led, lines.buzzer, lines.test_load):
            dev.on()
        lines.all_outputs_low()
        for dev in (lines.output_enable, lines.output_led, lines.buzzer, lines.test_load):
            assert dev.value == 0
    finally:
        lines.close()
