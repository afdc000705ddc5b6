"""The simulated board: the same code path as the real one below the bus.

The drivers talk to :class:`SimDacBus` and :class:`SimAdcBus` (hw/hal/sim/spi.py), which decode
MCP4922 words and answer MCP3208 requests byte for byte, and the lines are gpiozero devices on a
``MockFactory`` whose pins report every change to the plant. Fault injection covers every single
fault the safety chain must catch. Times are the board's own clock (the injected one), so trip
latencies are measured where the hardware would see them.
"""

from __future__ import annotations

import threading
from collections import deque
from time import monotonic, perf_counter

from gpiozero.pins.mock import MockFactory, MockPin

from hw.clock import Clock
from hw.config import Config
from hw.hal.sim.plant import DAMP_SKIN, DRY_SKIN, SKIN, SWEATY_SKIN, Load, Plant
from hw.hal.sim.spi import SimAdcBus, SimDacBus

SKINS = ("normal", "damp", "dry", "sweaty")
_SKIN_LOADS = {"normal": SKIN, "damp": DAMP_SKIN, "dry": DRY_SKIN, "sweaty": SWEATY_SKIN}
FAULTS = (
    "adc_stuck",  # every ADC channel returns the code it last converted
    "adc_current_stuck",  # only the current channel (CH0) repeats its last code; others live
    "dac_stuck",  # the DAC ignores writes and holds its last output
    "spi_error",  # every SPI transfer fails (EIO)
    "shorted_shunt",  # the shunt reads zero whatever flows
    "welded_relay",  # the output relay stays closed whatever drives it
    "dead_comparator",  # the hardware over-current latch never trips
    "lift_off",  # the electrodes leave the skin
    "charger",  # a charger / mains adapter is plugged in
    "overcurrent",  # the V-to-I stage fails to its rail
    "open_circuit",  # a break in the output path before the sense point
    "estop",  # the e-stop button is pressed
    "estop_wire_broken",  # the e-stop cable is broken: the loop is open
    "charger_wire_broken",  # the charger-detect wire is broken: reads (and acts as) a charger
    "estop_bridged",  # the e-stop element of the coil chain does not cut (shorted)
    "charger_bridged",  # the charger element of the coil chain does not cut (shorted)
    "rail_low",  # the compliance supply sags
    "adc_reference",  # the ADC's reference drifts
)

# Faults of the coil's series chain, and the plant flag each one sets.
INTERLOCK_FAULTS = {
    "estop": "estop_pressed",
    "charger": "charger_present",
    "estop_wire_broken": "estop_wire_broken",
    "charger_wire_broken": "charger_wire_broken",
    "estop_bridged": "estop_bridged",
    "charger_bridged": "charger_bridged",
}

MAX_PIN_HISTORY = 4096  # the dead-man pin toggles every tick; keep the history bounded


class SimPin(MockPin):
    """A MockPin that tells the simulated board about every change, with a bounded history."""

    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed:
            if len(self.states) > MAX_PIN_HISTORY:
                del self.states[: MAX_PIN_HISTORY // 2]
            hook = getattr(self._factory, "sim_hook", None)
            if hook is not None:
                hook(self._number, value)
        return changed


class SimBoard:
    """Chips, lines and plant of one simulated appliance, with fault injection."""

    def __init__(self, cfg: Config, clock: Clock, seed: int = 1):
        self.cfg = cfg
        self.clock = clock
        self.lock = threading.RLock()
        self.plant = Plant(cfg, clock.now(), seed=seed)
        hwp = cfg.hardware.pins
        self._pin_roles = {
            hwp.output_enable: "enable",
            hwp.deadman_kick: "kick",
            hwp.latch_rearm: "rearm",
            hwp.test_load: "test_load",
            hwp.buzzer: "buzzer",
            hwp.output_led: "led",
            hwp.dac_shutdown: "dac_shdn",
            hwp.estop_test: "estop_test",
            hwp.charger_test: "charger_test",
        }
        self.pin_numbers = hwp
        ch = cfg.hardware.adc_channels
        roles = {
            ch.current: "current",
            ch.electrode_voltage: "electrode_voltage",
            ch.compliance_rail: "compliance_rail",
            ch.reference: "reference",
        }
        self.factory = MockFactory(pin_class=SimPin)
        self.factory.sim_hook = self._on_pin_timed
        # perf_counter seconds spent simulating (bus transfers, pin hooks): the bench subtracts
        # it from a tick's cost to get the loop's own work.
        self.plant_s = 0.0
        self.dac_bus = SimDacBus(self)
        self.adc_bus = SimAdcBus(self, roles)
        self.spi_error = False
        self.adc_stuck_code: int | None = None
        self.adc_current_stuck_code: int | None = None
        self.last_adc_code = 0
        self.last_adc_codes: dict[str, int] = {}  # per channel role, the last code converted
        self.active_faults: set[str] = set()
        self.t_enable_low: float | None = clock.now()
        self.t_dac_zero: float | None = clock.now()
        self.t_relay_open: float | None = clock.now()
        self.events: deque[tuple[float, str, object]] = deque(maxlen=10000)
        self.buzzer_on = False
        self.led_on = False
        self.plant.on_relay_change = self._relay_changed
        self.plant.on_latch_change = self._latch_changed
        self.mirror = None  # hw.hal.sim.mirror.Mirror, when other processes must see the pins
        # The last dead-man edge on CLOCK_MONOTONIC, for the mirror: the lines outlive the process
        # in real time, whatever clock the board runs on (hw.clock.TickClock in the tests).
        self._kick_mono_s = -1e9
        self.plant.advance(clock.now())

    def attach_mirror(self, path) -> None:
        from hw.hal.sim.mirror import Mirror

        self.mirror = Mirror(path, self.plant.deadman_s)
        self._write_mirror()

    def _write_mirror(self) -> None:
        """Stamped on CLOCK_MONOTONIC, which the processes that read the mirror share (not on the
        board's clock)."""
        p = self.plant
        self.mirror.write(
            p.enable,
            p.shdn_high,
            p.relay_closed,
            p.latched,
            self._kick_mono_s,
            monotonic(),
            p.i_load_ua,
        )

    # ---- hooks from pins and plant ----------------------------------------------------------
    def _on_pin_timed(self, number: int, value: bool) -> None:
        t0 = perf_counter()
        try:
            self._on_pin(number, value)
        finally:
            self.plant_s += perf_counter() - t0

    def _on_pin(self, number: int, value: bool) -> None:
        role = self._pin_roles.get(number)
        if role is None:
            return
        with self.lock:
            now = self.clock.now()
            p = self.plant
            p.advance(now)
            if role == "kick":
                edge = p.last_kick_s
                p.kick(value, now)
                if p.last_kick_s != edge:
                    self._kick_mono_s = monotonic()
            elif role == "enable":
                p.enable = value
                if not value:
                    self.t_enable_low = now
                self.events.append((now, "enable", value))
            elif role == "rearm":
                if value:
                    p.rearm(now)
            elif role == "test_load":
                p.test_load_selected = value
            elif role == "buzzer":
                self.buzzer_on = value
                self.events.append((now, "buzzer", value))
            elif role == "led":
                self.led_on = value
            elif role == "dac_shdn":
                was = abs(p.dac_target_ua) < 1.0
                p.shdn_high = value
                if abs(p.dac_target_ua) < 1.0 and not was:
                    self.t_dac_zero = now
                self.events.append((now, "dac_shdn", value))
            elif role in ("estop_test", "charger_test"):
                setattr(p, role, value)
                self.events.append((now, role, value))
                self._drive_interlock_inputs()
            p._update_relay(now)
            if self.mirror is not None and role in ("kick", "enable", "dac_shdn"):
                self._write_mirror()

    def _relay_changed(self, t_s: float, closed: bool) -> None:
        if not closed:
            self.t_relay_open = t_s
        self.events.append((t_s, "relay", closed))

    def _latch_changed(self, t_s: float, latched: bool) -> None:
        self.events.append((t_s, "latch", latched))
        self._drive_input(self.pin_numbers.latch_status, latched)

    def _drive_input(self, number: int, high: bool) -> None:
        pin = self.factory.pin(number)
        if pin.function != "input":
            return  # not claimed by a device yet; the level is applied when it is
        if high:
            pin.drive_high()
        else:
            pin.drive_low()

    def sync_inputs(self) -> None:
        """Drive every input line to the plant's state (after the lines have been created)."""
        with self.lock:
            self._drive_input(self.pin_numbers.latch_status, self.plant.latched)
            self._drive_interlock_inputs()

    def _drive_interlock_inputs(self) -> None:
        # The read-backs report the chain's signals, not its elements: ESTOP_OK and CHG_OK pull
        # their lines low; without them the pull-ups win (pressed, charger, broken wire, test).
        p = self.plant
        self._drive_input(self.pin_numbers.estop, not p.estop_loop_closed)
        self._drive_input(self.pin_numbers.charger, not p.charger_ok)

    def _check_spi(self) -> None:
        if self.spi_error:
            raise OSError(5, "Input/output error (simulated SPI fault)")

    # ---- observation ----------------------------------------------------------------------------
    def advance(self) -> None:
        with self.lock:
            self.plant.advance(self.clock.now())
            self.plant._update_relay(self.clock.now())

    @property
    def enable_high(self) -> bool:
        return self.plant.enable

    @property
    def relay_closed(self) -> bool:
        self.advance()
        return self.plant.relay_closed

    @property
    def current_ua(self) -> float:
        """The current that really flows through the load (ground truth)."""
        self.advance()
        return self.plant.i_load_ua

    def output_cut_at(self) -> float | None:
        """When the output became safe (enable low AND DAC at zero), or None if it is not."""
        with self.lock:
            if self.plant.enable or abs(self.plant.dac_target_ua) >= 1.0:
                return None
            return max(self.t_enable_low or 0.0, self.t_dac_zero or 0.0)

    # ---- loads and faults -----------------------------------------------------------------------
    def set_load(self, load: Load) -> None:
        with self.lock:
            self.plant.advance(self.clock.now())
            self.plant.load = load

    def set_skin(self, kind: str) -> None:
        """One of SKINS: normal (gelled or well misted), damp, dry (gel-free), sweaty."""
        self.set_load(_SKIN_LOADS[kind])

    def set_contact(self, contact: float) -> None:
        with self.lock:
            self.plant.advance(self.clock.now())
            load = self.plant.load
            self.plant.load = Load(load.rs_ohm, load.rp_ohm, load.cp_f, max(0.0, min(1.0, contact)))

    def inject(self, fault: str) -> None:
        """Start one fault. See FAULTS for the list; ``clear`` ends it where that is physical."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        with self.lock:
            now = self.clock.now()
            p = self.plant
            p.advance(now)
            self.active_faults.add(fault)
            self.events.append((now, "fault", fault))
            if fault == "adc_stuck":
                self.adc_stuck_code = self.last_adc_code
            elif fault == "adc_current_stuck":
                # Frozen at its last conversion (mid-scale if it never converted).
                zero = self.cfg.hardware.front_end.adc_zero_code
                self.adc_current_stuck_code = self.last_adc_codes.get("current", zero)
            elif fault == "dac_stuck":
                p.freeze_dac()
            elif fault == "spi_error":
                self.spi_error = True
            elif fault == "shorted_shunt":
                p.shorted_shunt = True
            elif fault == "welded_relay":
                p.welded = True
                p._update_relay(now)
            elif fault == "dead_comparator":
                p.dead_comparator = True
            elif fault == "lift_off":
                self._contact_before = p.load.contact or 1.0
                self.set_contact(0.0)
            elif fault in INTERLOCK_FAULTS:
                setattr(p, INTERLOCK_FAULTS[fault], True)
                self._drive_interlock_inputs()
                p._update_relay(now)
            elif fault == "overcurrent":
                p.runaway = True
            elif fault == "open_circuit":
                p.open_circuit = True
            elif fault == "rail_low":
                p.rail_v = p.fe.rail_nominal_v * 0.6
            elif fault == "adc_reference":
                p.fe = p.fe.model_copy(update={"reference_code": p.fe.reference_code + 300})

    def clear(self, fault: str) -> None:
        """End a fault (re-contact after a lift, charger unplugged, e-stop released, ...)."""
        with self.lock:
            now = self.clock.now()
            p = self.plant
            p.advance(now)
            self.active_faults.discard(fault)
            self.events.append((now, "clear", fault))
            if fault == "adc_stuck":
                self.adc_stuck_code = None
            elif fault == "adc_current_stuck":
                self.adc_current_stuck_code = None
            elif fault == "dac_stuck":
                p.dac_stuck = False
            elif fault == "spi_error":
                self.spi_error = False
            elif fault == "shorted_shunt":
                p.shorted_shunt = False
            elif fault == "welded_relay":
                p.welded = False
            elif fault == "dead_comparator":
                p.dead_comparator = False
            elif fault == "lift_off":
                self.set_contact(getattr(self, "_contact_before", 1.0))
            elif fault in INTERLOCK_FAULTS:
                setattr(p, INTERLOCK_FAULTS[fault], False)
                self._drive_interlock_inputs()
                p._update_relay(now)
            elif fault == "overcurrent":
                p.runaway = False
            elif fault == "open_circuit":
                p.open_circuit = False
            elif fault == "rail_low":
                p.rail_v = p.fe.rail_nominal_v
            elif fault == "adc_reference":
                p.fe = self.cfg.hardware.front_end

    def clear_all(self) -> None:
        for f in list(self.active_faults):
            self.clear(f)
