"""The board's GPIO lines as gpiozero devices over an injected pin factory.

Output enable, dead-man kick, latch re-arm, test-load select, buzzer and LED are outputs that start
low (``initial_value=False``). Output enable is active high with a hardware pull-down, so a Pi that
crashed, rebooted or released its lines leaves the relay open. ``close()`` drives enable low
before it releases anything.

The control loop reads the inputs every tick through the pins directly (``*_pin.state``): gpiozero's
device properties add locking and value mapping that cost microseconds the loop does not have.

The e-stop loop and the charger detect sit in series with the relay coil (docs/hardware.md): they
cut without software, and their lines only report them. Both read-backs are pulled up, so a broken
wire reads "stop" / "charger present". ``estop_test`` and ``charger_test`` let the self-test open
each element as a press or a charger would.
"""

from __future__ import annotations

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from hw.config import Pins


class _EstopAsSeen:
    """The e-stop read-back as the control loop polls it (``.state``, high = stop).

    While the self-test's ``estop_test`` line is high the loop reads open *because of that line*:
    the test holds the coil chain open itself, so it is not a press. Only then is the read-back
    masked; a press that lasts beyond the test is seen as soon as the line drops, and start stays
    refused while the line is high (``Lines.estop_pressed``).
    """

    __slots__ = ("_readback", "_test")

    def __init__(self, readback, test):
        self._readback = readback
        self._test = test

    @property
    def state(self) -> bool:
        return bool(self._readback.state) and not self._test.state


class Lines:
    def __init__(self, pins: Pins, pin_factory):
        f = pin_factory
        # Enable first, low: nothing else is created before the output is known to be off.
        self.output_enable = DigitalOutputDevice(
            pins.output_enable, initial_value=False, pin_factory=f
        )
        self._devices = [self.output_enable]
        try:
            # Hardware /SHDN of the DAC: low (and pulled down) = both channels shut down, so the
            # stage input sits at zero current whatever the SPI bus is doing.
            self.dac_shutdown = self._add(
                DigitalOutputDevice(pins.dac_shutdown, initial_value=False, pin_factory=f)
            )
            self.deadman_kick = self._add(
                DigitalOutputDevice(pins.deadman_kick, initial_value=False, pin_factory=f)
            )
            self.latch_rearm = self._add(
                DigitalOutputDevice(pins.latch_rearm, initial_value=False, pin_factory=f)
            )
            self.test_load = self._add(
                DigitalOutputDevice(pins.test_load, initial_value=False, pin_factory=f)
            )
            self.buzzer = self._add(
                DigitalOutputDevice(pins.buzzer, initial_value=False, pin_factory=f)
            )
            self.output_led = self._add(
                DigitalOutputDevice(pins.output_led, initial_value=False, pin_factory=f)
            )
            self.latch_status = self._add(
                DigitalInputDevice(pins.latch_status, pull_up=False, pin_factory=f)
            )
            # The e-stop is a normally-closed contact to ground against a pull-up: released holds
            # the line low; pressed OR a broken wire lets it rise. High means stop.
            self.estop = self._add(DigitalInputDevice(pins.estop, pull_up=True, pin_factory=f))
            # The charger detect pulls the line low only while no charger is connected: a charger,
            # a broken wire or a dead detect circuit all let it rise. High means charger present.
            self.charger = self._add(DigitalInputDevice(pins.charger, pull_up=True, pin_factory=f))
            self.estop_test = self._add(
                DigitalOutputDevice(pins.estop_test, initial_value=False, pin_factory=f)
            )
            self.charger_test = self._add(
                DigitalOutputDevice(pins.charger_test, initial_value=False, pin_factory=f)
            )
        except Exception:
            self.close()
            raise
        self.enable_pin = self.output_enable.pin
        self.kick_pin = self.deadman_kick.pin
        self.latch_pin = self.latch_status.pin
        # The e-stop as the loop sees it: the read-back, except for the self-test's own pulse.
        self.estop_readback_pin = self.estop.pin
        self.estop_pin = _EstopAsSeen(self.estop.pin, self.estop_test.pin)
        self.charger_pin = self.charger.pin

    def _add(self, device):
        self._devices.append(device)
        return device

    def estop_pressed(self) -> bool:
        """Whether output must stay off for the e-stop: its loop reads open (pressed, broken
        wire) or the self-test line holds it open (so a stuck test line fails closed)."""
        return bool(self.estop_readback_pin.state or self.estop_test.pin.state)

    def all_outputs_low(self) -> None:
        for d in self._devices:
            if isinstance(d, DigitalOutputDevice):
                d.off()

    def close(self) -> None:
        """Enable low first, then release every line. Safe to call twice."""
        try:
            if not self.output_enable.closed:
                self.output_enable.off()
            if hasattr(self, "dac_shutdown") and not self.dac_shutdown.closed:
                self.dac_shutdown.off()
        finally:
            for d in reversed(self._devices):
                try:
                    if isinstance(d, DigitalOutputDevice) and not d.closed:
                        d.off()
                    d.close()
                except Exception:  # noqa: BLE001 - closing must reach every device
                    pass
