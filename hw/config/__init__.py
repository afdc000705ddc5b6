"""Typed, range-checked configuration with ceilings that no YAML can raise.

Three files make one configuration:

* the packaged defaults (``config/default.yaml``, shipped as ``hw/default.yaml``): limits, loop,
  the self-test's tolerances, programs, ui;
* the board file (``hw.config.boardfile``): what describes one board as built (SPI, pins, ADC
  channels, front-end scale factors), written by the calibration step and protected by a checksum;
* an optional site file, merged over the defaults (mappings key by key, lists replaced whole). It
  may set ``ui`` and ``programs``, and may move a limit only in its safer direction from the
  packaged value (``SAFER``); it can never touch the board's keys.

The merged tree is validated by the models below in strict mode: wrong types, unknown keys, values
outside the code ceilings and inconsistent combinations are all errors. A bad config raises
:class:`ConfigError`, which names the file, the key path, the value and what is allowed; the daemon
then refuses to drive any output. Nothing here is read at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from hw.config import boardfile
from hw.config.boardfile import BOARD_SECTIONS
from hw.config.yamlfile import (  # noqa: F401 - ConfigError and Problem are part of this module's API
    _MISSING,
    ConfigError,
    Problem,
    _allowed_text,
    _file_for,
    _loc_to_path,
    _merge,
    _origins,
    _read_yaml,
)

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

# --------------------------------------------------------------------------------------------
# What a site file may change, and which way. A site may only make the device safer: each number
# below may move from its packaged value in the direction given, never past it. A key of limits,
# loop or hardware.post that is not listed cannot be changed by a site file at all (no direction
# of it is safer, or it ties other checks: the loop rate, the level count, the stop ramp, the
# self-test's check current); a new key added to those models is fixed until it is listed here.
# --------------------------------------------------------------------------------------------
LOWER, HIGHER = "lower", "higher"
SAFER: dict[str, str] = {
    "limits.max_current_ua": LOWER,
    "limits.overcurrent_trip_ua": LOWER,  # trips sooner
    "limits.hw_overcurrent_ua": LOWER,
    "limits.setpoint_tolerance_pct": LOWER,
    "limits.setpoint_tolerance_ua": LOWER,
    "limits.overcurrent_debounce_ms": LOWER,  # every debounce: acts sooner
    "limits.follow_ratio": HIGHER,  # more of the command must flow to count as following
    "limits.follow_min_ua": LOWER,  # smaller commands are judged too
    "limits.follow_debounce_ms": LOWER,
    "limits.lift_debounce_ms": LOWER,
    "limits.min_impedance_ohm": HIGHER,  # electrodes touching are called sooner
    "limits.max_impedance_ohm": LOWER,  # poor contact (high current density) is lift-off sooner
    "limits.impedance_debounce_ms": LOWER,
    "limits.max_net_charge_uc": LOWER,
    "limits.max_output_s": LOWER,
    "limits.daily_max_s": LOWER,
    "limits.lease_ms": LOWER,  # a silent kiosk is cut sooner
    "limits.ramp_up_s": HIGHER,  # a gentler start
    "limits.level_min_ua": LOWER,
    "limits.level_max_ua": LOWER,
    "limits.probe_current_ua": LOWER,
    "limits.probe_interval_ms": HIGHER,  # fewer probes, fewer relay operations
    "limits.recontact_ms": HIGHER,  # contact must be good for longer before output returns
    "limits.lifted_max_s": LOWER,  # a long lift-off pauses sooner (only a resume goes on)
    "loop.stall_ms": LOWER,
    "loop.service_heartbeat_ms": LOWER,  # a silent engine is cut sooner
    "loop.supervisor_period_ms": LOWER,
    "loop.adc_stale_ms": LOWER,
    # loop.realtime_priority is fixed: a site file cannot turn real-time scheduling off.
    "hardware.post.tolerance_pct": LOWER,
    "hardware.post.tolerance_ua": LOWER,
    "hardware.post.zero_tolerance_ua": LOWER,
}
SITE_SECTIONS = ("limits", "loop", "hardware", "programs", "ui")
_LIMIT_SECTIONS = ("limits", "loop", "hardware.post")


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

    def program(self, program_id: str) -> Program:
        for p in self.programs:
            if p.id == program_id:
                return p
        raise KeyError(program_id)

    @property
    def tick_s(self) -> float:
        return 1.0 / self.loop.rate_hz


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def default_config_path() -> Path:
    """Where the packaged defaults live (works from a checkout and from an installed wheel)."""
    return Path(str(resources.files("hw").joinpath("default.yaml")))


def _cross_checks(cfg: Config) -> Iterator[tuple[str, Any, str]]:
    lim = cfg.limits
    if lim.overcurrent_trip_ua <= lim.max_current_ua:
        yield (
            "limits.overcurrent_trip_ua",
            lim.overcurrent_trip_ua,
            (f"must be above limits.max_current_ua ({lim.max_current_ua})"),
        )
    if lim.hw_overcurrent_ua < lim.overcurrent_trip_ua:
        yield (
            "limits.hw_overcurrent_ua",
            lim.hw_overcurrent_ua,
            (f"must be at least limits.overcurrent_trip_ua ({lim.overcurrent_trip_ua})"),
        )
    if lim.level_max_ua > lim.max_current_ua:
        yield (
            "limits.level_max_ua",
            lim.level_max_ua,
            (f"must be at most limits.max_current_ua ({lim.max_current_ua})"),
        )
    if lim.level_min_ua >= lim.level_max_ua:
        yield (
            "limits.level_min_ua",
            lim.level_min_ua,
            (f"must be below limits.level_max_ua ({lim.level_max_ua})"),
        )
    if lim.probe_current_ua >= lim.level_min_ua:
        yield (
            "limits.probe_current_ua",
            lim.probe_current_ua,
            (f"must be below limits.level_min_ua ({lim.level_min_ua})"),
        )
    if lim.follow_min_ua > lim.level_min_ua:
        yield (
            "limits.follow_min_ua",
            lim.follow_min_ua,
            (f"must be at most limits.level_min_ua ({lim.level_min_ua}) so every level is checked"),
        )
    if lim.min_impedance_ohm >= lim.max_impedance_ohm:
        yield (
            "limits.min_impedance_ohm",
            lim.min_impedance_ohm,
            (f"must be below limits.max_impedance_ohm ({lim.max_impedance_ohm})"),
        )
    fe = cfg.hardware.front_end
    full_ua = fe.dac_ua_per_code * max(fe.dac_zero_code, 4095 - fe.dac_zero_code)
    if full_ua > STAGE_FULL_SCALE_UA * 1.05:
        yield (
            "hardware.front_end.dac_ua_per_code",
            fe.dac_ua_per_code,
            f"the DAC's full scale would exceed the {STAGE_FULL_SCALE_UA:.0f} uA hardware ceiling",
        )
    if (
        fe.adc_ua_per_code * min(fe.adc_zero_code, 4095 - fe.adc_zero_code)
        <= lim.overcurrent_trip_ua
    ):
        yield (
            "hardware.front_end.adc_ua_per_code",
            fe.adc_ua_per_code,
            ("the ADC must read beyond limits.overcurrent_trip_ua or an over-current is invisible"),
        )
    if fe.threshold_ua_per_code * 4095 < lim.hw_overcurrent_ua:
        yield (
            "hardware.front_end.threshold_ua_per_code",
            fe.threshold_ua_per_code,
            (f"DAC channel B must reach limits.hw_overcurrent_ua ({lim.hw_overcurrent_ua})"),
        )
    if cfg.loop.supervisor_period_ms > cfg.loop.stall_ms / 2:
        yield (
            "loop.supervisor_period_ms",
            cfg.loop.supervisor_period_ms,
            (f"must be at most half of loop.stall_ms ({cfg.loop.stall_ms}) to catch a stall"),
        )
    pins = cfg.hardware.pins.model_dump()
    seen: dict[int, str] = {}
    for name, pin in pins.items():
        if pin in seen:
            yield f"hardware.pins.{name}", pin, f"already used by hardware.pins.{seen[pin]}"
        seen[pin] = name
    # SPI0 uses GPIO 7-11 on the Pi: a control line there would fight the bus.
    for name, pin in pins.items():
        if 7 <= pin <= 11:
            yield f"hardware.pins.{name}", pin, "GPIO 7-11 are the SPI0 bus pins"
    chans = cfg.hardware.adc_channels.model_dump()
    seen_ch: dict[int, str] = {}
    for name, ch in chans.items():
        if ch in seen_ch:
            yield f"hardware.adc_channels.{name}", ch, f"already used by {seen_ch[ch]}"
        seen_ch[ch] = name
    dac, adc = cfg.hardware.dac_spi, cfg.hardware.adc_spi
    if (dac.bus, dac.device) == (adc.bus, adc.device):
        yield "hardware.adc_spi.device", adc.device, "DAC and ADC need different chip selects"
    if adc.max_speed_hz > 2_000_000:
        yield (
            "hardware.adc_spi.max_speed_hz",
            adc.max_speed_hz,
            ("the MCP3208 is specified up to 2 MHz at 5 V"),
        )
    tick_ms = 1000.0 / cfg.loop.rate_hz
    if cfg.loop.stall_ms < 4 * tick_ms:
        yield "loop.stall_ms", cfg.loop.stall_ms, f"must be at least 4 ticks ({4 * tick_ms} ms)"
    if cfg.loop.spin_us * 1e-3 >= tick_ms / 2:
        yield "loop.spin_us", cfg.loop.spin_us, "must be under half a tick"
    ids: dict[str, int] = {}
    for i, prog in enumerate(cfg.programs):
        if prog.id in ids:
            yield f"programs[{i}].id", prog.id, f"duplicate of programs[{ids[prog.id]}].id"
        ids.setdefault(prog.id, i)
        total_s = 0.0
        for j, step in enumerate(prog.steps):
            where = f"programs[{i}].steps[{j}]"
            total_s += step.duration_s
            if step.max_level > lim.level_count:
                yield (
                    f"{where}.max_level",
                    step.max_level,
                    (f"must be at most limits.level_count ({lim.level_count})"),
                )
            period_ms = 1000.0 / step.frequency_hz
            if 2 * step.pulse_width_ms > period_ms + 1e-9:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    (
                        f"two phases must fit in one period ({period_ms:g} ms at "
                        f"{step.frequency_hz:g} Hz): at most {period_ms / 2:g}"
                    ),
                )
            if step.pulse_width_ms < tick_ms - 1e-9:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    (f"must be at least one loop tick ({tick_ms:g} ms)"),
                )
            ratio = step.pulse_width_ms / tick_ms
            if abs(ratio - round(ratio)) > 1e-6:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    (
                        f"must be a whole number of loop ticks ({tick_ms:g} ms) so both phases "
                        "carry the same charge"
                    ),
                )
            # One phase of the step at its cap must fit well under the net-charge bound, or a
            # normal pulse (or a lift-off in mid-pair) would trip it.
            span = lim.level_max_ua - lim.level_min_ua
            cap_ua = lim.level_min_ua + span * (min(step.max_level, lim.level_count) - 1) / max(
                1, lim.level_count - 1
            )
            phase_uc = cap_ua * step.pulse_width_ms / 1000.0
            if phase_uc > 0.8 * lim.max_net_charge_uc:
                yield (
                    f"{where}.pulse_width_ms",
                    step.pulse_width_ms,
                    f"one phase at max_level carries {phase_uc:g} uC; it must stay under 80 % of "
                    f"limits.max_net_charge_uc ({lim.max_net_charge_uc})",
                )
            if step.relocate_cue_s and step.relocate_cue_s > step.duration_s:
                yield (
                    f"{where}.relocate_cue_s",
                    step.relocate_cue_s,
                    (f"must not exceed the step's duration_s ({step.duration_s})"),
                )
        if total_s > lim.max_output_s:
            yield (
                f"programs[{i}].steps",
                f"{total_s:g} s in total",
                (f"a program must fit in limits.max_output_s ({lim.max_output_s})"),
            )


def _validate(
    tree: dict, origin: dict[str, str], fallback: Any
) -> tuple[Config | None, list[Problem]]:
    try:
        return Config.model_validate(tree), []
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            key = _loc_to_path(err["loc"])
            value = err.get("input", _MISSING) if err["type"] != "missing" else _MISSING
            problems.append(
                Problem(_file_for(key, origin, fallback(key)), key, value, _allowed_text(err))
            )
        return None, problems


def _take_board_keys(tree: dict, name: str, why: str) -> tuple[dict, list[Problem]]:
    """Remove the board's sections from a defaults or site tree; one problem per key found."""
    hw = tree.get("hardware")
    if not isinstance(hw, Mapping):
        return tree, []
    problems = []
    for section in [k for k in hw if k in BOARD_SECTIONS]:
        value = hw[section]
        if isinstance(value, Mapping) and value:
            for key, leaf in value.items():
                problems.append(Problem(name, f"hardware.{section}.{key}", leaf, why))
        else:
            problems.append(Problem(name, f"hardware.{section}", value, why))
    kept = {k: v for k, v in hw.items() if k not in BOARD_SECTIONS}
    return {**tree, "hardware": kept}, problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _direction_problems(
    site: dict, base: dict, site_name: str, default_name: str, skip: set[str]
) -> Iterator[Problem]:
    """Every limit the site file moves in its unsafe direction, or changes when it is fixed."""
    for section in _LIMIT_SECTIONS:
        over, packaged = site, base
        for part in section.split("."):
            over = over.get(part) if isinstance(over, Mapping) else None
            packaged = packaged.get(part) if isinstance(packaged, Mapping) else None
        if not isinstance(over, Mapping) or not isinstance(packaged, Mapping):
            continue  # a wrong type is the schema's finding
        for key, value in over.items():
            path = f"{section}.{key}"
            if path in skip or key not in packaged:
                continue  # invalid or unknown: already reported by the schema
            was = packaged[key]
            if not (_is_number(value) and _is_number(was)) or value == was:
                continue
            way = SAFER.get(path)
            where = f"the packaged value is {was:g} ({default_name})"
            if way is None:
                yield Problem(
                    site_name, path, value, f"a site file cannot change this key; {where}"
                )
            elif way == LOWER and value > was:
                yield Problem(
                    site_name, path, value, f"{where}: a site file may only lower it (safer)"
                )
            elif way == HIGHER and value < was:
                yield Problem(
                    site_name, path, value, f"{where}: a site file may only raise it (safer)"
                )


def load_config(
    site_path: str | os.PathLike | None = None,
    default_path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    board_path: str | os.PathLike | None = None,
) -> Config:
    """Load the defaults and the board file, merge the site file over them, and validate.

    ``site_path`` falls back to the ``MCK_CONFIG`` environment variable; with neither, the defaults
    are used alone. ``board_path`` falls back to ``MCK_BOARD``, then to the packaged board file of
    the simulated board (the daemon on real hardware passes ``hw.config.boardfile.board_path_for``,
    which never falls back to the sim). Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if env is None else env
    dpath = Path(default_path) if default_path else default_config_path()
    if site_path is None and env.get("MCK_CONFIG"):
        site_path = env["MCK_CONFIG"]
    bpath = Path(board_path) if board_path else boardfile.board_path_for(None, sim=True, env=env)
    dname, bname = str(dpath), str(bpath)
    defaults = _read_yaml(dpath)
    board_hw = boardfile.read_board(bpath)
    defaults, problems = _take_board_keys(
        defaults, dname, f"describes the board: it belongs in the board file ({bname})"
    )
    origin = dict(_origins(defaults, dname))
    tree = _merge(defaults, {"hardware": board_hw}, origin, bname)
    base, base_origin = tree, dict(origin)

    def fallback(key: str) -> str:
        # Keys missing from the merged tree are the defaults' or the board file's fault: a site
        # file is partial by design.
        section = key.split(".")[1] if key.startswith("hardware.") else ""
        return bname if section in boardfile.BOARD_SECTIONS else dname

    site: dict | None = None
    if site_path is not None:
        sname = str(Path(site_path))
        site, found = _take_board_keys(
            _read_yaml(Path(site_path)),
            sname,
            f"describes the board: only the board file ({bname}), written by "
            "`python -m hw.calibrate`, may set it; a site file cannot",
        )
        problems += found
        tree = _merge(tree, site, origin, sname)
    cfg, schema = _validate(tree, origin, fallback)
    problems += schema
    if site is not None:
        # A value the site file hides may itself be broken: the defaults must hold on their own.
        seen = {(p.file, p.key) for p in problems}
        _, hidden = _validate(base, base_origin, fallback)
        problems += [p for p in hidden if (p.file, p.key) not in seen]
        bad = {p.key for p in schema} | {p.key for p in hidden}
        problems += _direction_problems(site, base, sname, dname, bad)
    if cfg is None:
        raise ConfigError(problems)
    refused = {p.key for p in problems}
    for key, value, allowed in _cross_checks(cfg):
        if key in refused:
            continue  # the direction refusal is the one to fix first
        # A rule that ties two keys is broken by whichever file set one of them: name the site
        # (or board) file when it supplied any key the rule mentions (the defaults are
        # consistent alone).
        related = [key, *re.findall(r"\b((?:limits|loop|hardware|programs)[\w.\[\]]*\w)", allowed)]
        files = [_file_for(k, origin, fallback(k)) for k in related]
        chosen = next((f for f in files if f != dname), files[0])
        problems.append(Problem(chosen, key, value, allowed))
    if problems:
        raise ConfigError(problems)
    return cfg
