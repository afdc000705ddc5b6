"""The configuration's typed models and the code ceilings no YAML can raise.

Every model is strict (wrong types and unknown keys are errors) and frozen; every number is held
inside a range here, in the unit its name says. hw/config/checks.py adds the rules that tie keys
together; hw/config/__init__.py loads and validates the files.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr
from pydantic_core import PydanticCustomError

# --------------------------------------------------------------------------------------------
# Ceilings. These are the hard bounds of the product; YAML can only choose values inside them.
# --------------------------------------------------------------------------------------------
# The product is a facial device, so the current ceilings are the face's, not the stage's full
# scale (1000 uA, STAGE_FULL_SCALE_UA). Home facial microcurrent devices work in 10-500 uA
# (typically 50-400), cleared toners reach 390 uA, and professional practice keeps <= 200 uA on
# the face (the project's device field notes, section 5, rows 11-13). So no setpoint may exceed
# 500 uA; the software trip may sit at most 20 % above that (the regulation error plus the ADC's
# noise must not reach it in normal use: the packaged 480 over 400 is the same 20 %), and the
# hardware comparator at most 40 % above it (its own divider and offset tolerance, ~15 %, under
# the POST's threshold check, must keep it above the software trip).
CEIL_CURRENT_UA = 500.0  # highest setpoint (limits.max_current_ua, every level)
CEIL_OVERCURRENT_TRIP_UA = 600.0  # 1.2 x CEIL_CURRENT_UA: software absolute trip
CEIL_HW_OVERCURRENT_UA = 700.0  # 1.4 x CEIL_CURRENT_UA: comparator threshold on DAC channel B
STAGE_FULL_SCALE_UA = 1000.0  # the Howland stage's design full scale (a board fact, not a limit)
CEIL_NET_CHARGE_UC = 1000.0  # 1 mC: far below any electrochemical concern for a treatment
CEIL_OUTPUT_S = 1800.0  # one treatment: 30 min/session (Omron Avail; NuFACE Mini+ 20 min auto-off)
CEIL_DAILY_S = 3 * 3600.0  # 180 min/day (Omron Avail microcurrent)
LEASE_MS_RANGE = (50.0, 2000.0)
RAMP_UP_S_RANGE = (1.0, 3.0)  # design: every start ramps over 1-3 s
RAMP_DOWN_S_RANGE = (0.05, 2.0)
LEVEL_COUNT_RANGE = (3, 20)
CEIL_PROBE_UA = 50.0
FREQ_HZ_RANGE = (0.1, 500.0)
PULSE_WIDTH_MS_RANGE = (0.5, 1000.0)
STEP_S_RANGE = (5.0, 900.0)
LOOP_HZ_RANGE = (500, 5000)
STALL_MS_RANGE = (2.0, 20.0)  # the supervisor must cut within 20 ms of a stalled loop
MIN_IMPEDANCE_OHM_RANGE = (50.0, 2000.0)
MAX_IMPEDANCE_OHM_RANGE = (5000.0, 200000.0)
DEBOUNCE_MS_RANGE = (0.0, 10.0)  # design: debounced checks act within 10 ms
# Where a program may put the electrodes: the face's allowed zones only, a fixed list. No eyes, no
# mouth and no front of the neck or throat (IEC 60601-2-10 201.7.9.2.101 h: no stimulation on the
# eyes, covering the mouth, or on the front of the neck / carotid sinus). "neck" is the sides of
# the neck only, as every step text using it must say.
ZONES = ("forehead", "brows", "cheeks", "nose", "jawline", "chin", "neck")

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def choice(*allowed: int) -> Any:
    """An int that must be one of ``allowed``, written exactly (pydantic's Literal takes 90.0)."""
    text = ", ".join(str(a) for a in allowed[:-1]) + f" or {allowed[-1]}"

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            raise PydanticCustomError(
                "choice", "must be one of {text} (a whole number)", {"text": text}
            )
        return value

    return Annotated[int, BeforeValidator(check)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _rng(lo: float, hi: float, **kw: Any) -> Any:
    return Field(ge=lo, le=hi, **kw)


class Limits(_Strict):
    """Safety limits, each inside a code ceiling. Currents in microamps (uA)."""

    max_current_ua: float = Field(gt=0, le=CEIL_CURRENT_UA)
    overcurrent_trip_ua: float = Field(gt=0, le=CEIL_OVERCURRENT_TRIP_UA)
    hw_overcurrent_ua: float = Field(gt=0, le=CEIL_HW_OVERCURRENT_UA)
    setpoint_tolerance_pct: float = _rng(1, 50)
    setpoint_tolerance_ua: float = _rng(1, 100)
    overcurrent_debounce_ms: float = _rng(*DEBOUNCE_MS_RANGE)
    follow_ratio: float = _rng(0.1, 0.9)
    follow_min_ua: float = _rng(5, 200)
    follow_debounce_ms: float = _rng(*DEBOUNCE_MS_RANGE)
    lift_debounce_ms: float = _rng(*DEBOUNCE_MS_RANGE)
    min_impedance_ohm: float = _rng(*MIN_IMPEDANCE_OHM_RANGE)
    max_impedance_ohm: float = _rng(*MAX_IMPEDANCE_OHM_RANGE)
    impedance_debounce_ms: float = _rng(*DEBOUNCE_MS_RANGE)
    max_net_charge_uc: float = Field(gt=0, le=CEIL_NET_CHARGE_UC)
    max_output_s: float = Field(gt=0, le=CEIL_OUTPUT_S)
    daily_max_s: float = Field(gt=0, le=CEIL_DAILY_S)
    lease_ms: float = _rng(*LEASE_MS_RANGE)
    ramp_up_s: float = _rng(*RAMP_UP_S_RANGE)
    ramp_down_s: float = _rng(*RAMP_DOWN_S_RANGE)  # the shortest stop ramp (see Waveform.stop_ramp)
    level_count: int = _rng(*LEVEL_COUNT_RANGE)
    level_min_ua: float = Field(gt=0, le=CEIL_CURRENT_UA)
    level_max_ua: float = Field(gt=0, le=CEIL_CURRENT_UA)
    probe_current_ua: float = Field(gt=0, le=CEIL_PROBE_UA)
    probe_interval_ms: float = _rng(20, 1000)
    recontact_ms: float = _rng(50, 3000)
    # Lifted longer than this, the output is cut and only an explicit resume brings it back.
    lifted_max_s: float = _rng(1, 120)


class Loop(_Strict):
    """The fixed-rate control loop."""

    rate_hz: int = _rng(*LOOP_HZ_RANGE)
    spin_us: float = _rng(0, 400)
    stall_ms: float = _rng(*STALL_MS_RANGE)
    supervisor_period_ms: float = _rng(0.5, 5.0)
    realtime_priority: int = _rng(0, 99)
    adc_stale_ms: float = _rng(1.0, 50.0)
    # The engine must beat within this while output is on, or the loop trips (<= the lease in
    # effect; 500 ms is the code ceiling, 60 ms = three service periods the floor).
    service_heartbeat_ms: float = _rng(60.0, 500.0)


class SpiDevice(_Strict):
    bus: int = _rng(0, 6)
    device: int = _rng(0, 2)
    max_speed_hz: int = _rng(10_000, 20_000_000)
    mode: choice(0, 3)  # both chips support SPI modes 0,0 and 1,1


class Pins(_Strict):
    """BCM GPIO numbers."""

    output_enable: int = _rng(2, 27)
    deadman_kick: int = _rng(2, 27)
    latch_status: int = _rng(2, 27)
    latch_rearm: int = _rng(2, 27)
    estop: int = _rng(2, 27)
    test_load: int = _rng(2, 27)
    buzzer: int = _rng(2, 27)
    output_led: int = _rng(2, 27)
    charger: int = _rng(2, 27)
    dac_shutdown: int = _rng(2, 27)  # to the DAC's /SHDN pin: a path to zero without SPI
    # Self-test lines that open the e-stop / charger element of the relay coil's series chain.
    estop_test: int = _rng(2, 27)
    charger_test: int = _rng(2, 27)


class AdcChannels(_Strict):
    current: int = _rng(0, 7)
    electrode_voltage: int = _rng(0, 7)
    compliance_rail: int = _rng(0, 7)
    reference: int = _rng(0, 7)


class FrontEnd(_Strict):
    """Scale factors of the analog front end (see docs/hardware.md)."""

    dac_zero_code: int = _rng(1800, 2300)
    dac_ua_per_code: float = _rng(0.3, 0.7)  # keeps full scale near the stage's 1000 uA
    threshold_ua_per_code: float = _rng(0.1, 0.5)
    adc_zero_code: int = _rng(1800, 2300)
    adc_ua_per_code: float = _rng(0.2, 1.0)
    electrode_v_per_code: PositiveFloat
    rail_v_per_code: PositiveFloat
    rail_nominal_v: float = _rng(5, 40)
    rail_tolerance_pct: float = _rng(1, 30)
    compliance_v: float = _rng(3, 40)
    reference_code: int = _rng(100, 4000)
    reference_tolerance_codes: int = _rng(4, 400)
    test_load_ohm: float = _rng(500, 20000)
    deadman_ms: float = _rng(5, 50)
    # Output relay, datasheet maxima: coil on -> contacts settled (operate plus bounce), and coil
    # off -> contacts apart. Software waits these out before it judges current or its absence.
    # Release is capped at 1 ms: a runaway stage is cut by the comparator through the relay, so
    # its release time is how long a fault current can flow (docs/hardware.md, docs/safety.md).
    relay_operate_ms: float = _rng(0.5, 10)
    relay_release_ms: float = _rng(0.1, 1.0)


class Post(_Strict):
    check_current_ua: float = _rng(20, 500)
    tolerance_pct: float = _rng(1, 20)
    tolerance_ua: float = _rng(1, 50)
    zero_tolerance_ua: float = _rng(1, 50)


class Hardware(_Strict):
    dac_spi: SpiDevice
    adc_spi: SpiDevice
    pins: Pins
    adc_channels: AdcChannels
    front_end: FrontEnd
    post: Post


class Step(_Strict):
    """One step of a program: a zone, how to move, and the waveform."""

    zone: Literal[ZONES]  # type: ignore[valid-type]
    motion: Literal["glide", "hold"]
    duration_s: float = _rng(*STEP_S_RANGE)
    frequency_hz: float = _rng(*FREQ_HZ_RANGE)
    pulse_width_ms: float = _rng(*PULSE_WIDTH_MS_RANGE)
    max_level: int = _rng(1, LEVEL_COUNT_RANGE[1])
    relocate_cue_s: float = _rng(0, 60)  # 0: no relocate cue
    text: str = Field(min_length=1, max_length=300)


class Program(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    name: str = Field(min_length=1, max_length=60)
    description: str = Field(max_length=300)
    steps: tuple[Step, ...] = Field(min_length=1, max_length=30, strict=False)  # YAML lists


class Ui(_Strict):
    rotation: choice(0, 90, 180, 270)  # degrees

    fullscreen: bool
    blank_after_s: float = _rng(10, 3600)


class Config(_Strict):
    limits: Limits
    loop: Loop
    hardware: Hardware
    programs: tuple[Program, ...] = Field(min_length=1, max_length=50, strict=False)
    ui: Ui
    # Which file each value came from ("limits.lease_ms" -> path), set by hw.config.load_config;
    # empty for a Config built in code.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        # The same values are the same config, whichever files they came from.
        if not isinstance(other, Config):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def model_copy(self, *, update=None, deep: bool = False):  # noqa: ANN201 - pydantic's
        """A copy; a section replaced by ``update`` no longer names the file it came from."""
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy._sources = {
                k: f for k, f in self._sources.items() if k.split(".")[0] not in update
            }
        return copy

    def source_of(self, key: str) -> str:
        """The file that set ``key`` (a dotted path such as ``limits.lease_ms``), or "built in"."""
        probe = key
        while probe:
            if probe in self._sources:
                return self._sources[probe]
            probe = probe.rpartition(".")[0]
        return "built in"

    def program(self, program_id: str) -> Program:
        for p in self.programs:
            if p.id == program_id:
                return p
        raise KeyError(program_id)

    @property
    def tick_s(self) -> float:
        return 1.0 / self.loop.rate_hz
