"""Typed, range-checked configuration with ceilings that no YAML can raise.

The packaged defaults (``config/default.yaml``, shipped as ``hw/default.yaml``) are loaded first
and a site file is merged over them (mappings merge key by key, lists are replaced whole). The
merged tree is validated by the models below in strict mode: wrong types, unknown keys, values
outside the code ceilings and inconsistent combinations are all errors. A bad config raises
:class:`ConfigError`, which names the file, the key path, the value and what is allowed; the daemon
then refuses to drive any output. Nothing here is read at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

# --------------------------------------------------------------------------------------------
# Ceilings. These are the hard bounds of the product; YAML can only choose values inside them.
# --------------------------------------------------------------------------------------------
CEIL_CURRENT_UA = 1000.0  # the stage's full scale; no setpoint may ever exceed it
CEIL_OVERCURRENT_TRIP_UA = 1100.0  # software trip threshold (the ADC reads to +/-1250 uA)
CEIL_HW_OVERCURRENT_UA = 1200.0  # comparator threshold on DAC channel B
CEIL_NET_CHARGE_UC = 1000.0  # 1 mC: far below any electrochemical concern for a treatment
CEIL_OUTPUT_S = 3600.0  # one treatment
CEIL_DAILY_S = 3 * 3600.0
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
ZONES = ("forehead", "brows", "eyes", "cheeks", "nose", "lips", "jawline", "chin", "neck")

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


class ConfigError(Exception):
    """A configuration that must not be used. ``problems`` holds one ``Problem`` per finding."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        shown = "<missing>" if self.value is _MISSING else repr(self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{self.file}: {self.key or '<top level>'} = {shown}: {self.allowed}"


_MISSING = object()


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


class Loop(_Strict):
    """The fixed-rate control loop."""

    rate_hz: int = _rng(*LOOP_HZ_RANGE)
    spin_us: float = _rng(0, 400)
    stall_ms: float = _rng(*STALL_MS_RANGE)
    supervisor_period_ms: float = _rng(0.5, 5.0)
    realtime_priority: int = _rng(0, 99)
    adc_stale_ms: float = _rng(1.0, 50.0)


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
    dac_ua_per_code: float = _rng(0.3, 0.7)  # keeps full scale near the 1000 uA hardware ceiling
    threshold_ua_per_code: float = _rng(0.1, 0.5)
    adc_zero_code: int = _rng(1800, 2300)
    adc_ua_per_code: float = _rng(0.3, 1.0)
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a key must be a plain name, not {type(key).__name__}",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def default_config_path() -> Path:
    """Where the packaged defaults live (works from a checkout and from an installed wheel)."""
    return Path(str(resources.files("hw").joinpath("default.yaml")))


def _read_yaml(path: Path) -> dict:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(name, "", _MISSING, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(name, "", _MISSING, f"cannot be read: {e}")]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except RecursionError:
        raise ConfigError([Problem(name, "", _MISSING, "broken YAML: nested too deeply")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([Problem(name, where, _MISSING, f"broken YAML: {problem}")]) from None
    if data is None:
        raise ConfigError([Problem(name, "", _MISSING, "the file is empty; expected a mapping")])
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(name, "", type(data).__name__, "the top level must be a mapping of sections")]
        )
    return data


def _merge(base: dict, over: Mapping, origin: dict, over_name: str, prefix: str = "") -> dict:
    """Deep-merge ``over`` into a copy of ``base``; record which file supplied every key path."""
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value, origin, over_name, path)
        else:
            out[key] = value
            for p in [p for p in origin if p == path or p.startswith((path + ".", path + "["))]:
                del origin[p]
            origin[path] = over_name
    return out


def _origins(tree: Any, name: str, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            yield path, name
            yield from _origins(v, name, path)


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _file_for(path: str, origin: dict[str, str], fallback: str) -> str:
    probe = path
    while probe:
        if probe in origin:
            return origin[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return fallback


def _allowed_text(err: dict) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (not part of the schema; check the spelling)"
    if kind in ("tuple_type", "list_type"):
        return "must be a list (YAML '- item' entries)"
    if kind == "missing":
        return "required key is missing"
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        bounds = {
            "less_than_equal": "at most",
            "less_than": "below",
            "greater_than_equal": "at least",
            "greater_than": "above",
        }
        limit = next(iter(ctx.values())) if ctx else "?"
        return f"must be {bounds[kind]} {limit} (a ceiling in hw/config.py)"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}" if "expected" in ctx else err["msg"]
    return err["msg"]


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
    if fe.dac_ua_per_code * max(fe.dac_zero_code, 4095 - fe.dac_zero_code) > CEIL_CURRENT_UA * 1.05:
        yield (
            "hardware.front_end.dac_ua_per_code",
            fe.dac_ua_per_code,
            (f"the DAC's full scale would exceed the {CEIL_CURRENT_UA:.0f} uA hardware ceiling"),
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


def load_config(
    site_path: str | os.PathLike | None = None,
    default_path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load the defaults, merge the site file over them, and validate.

    ``site_path`` falls back to the ``MCK_CONFIG`` environment variable; with neither, the defaults
    are used alone. Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if env is None else env
    dpath = Path(default_path) if default_path else default_config_path()
    if site_path is None and env.get("MCK_CONFIG"):
        site_path = env["MCK_CONFIG"]
    tree = _read_yaml(dpath)
    origin = dict(_origins(tree, str(dpath)))
    for path in list(origin):
        origin[path] = str(dpath)
    # Keys missing from the merged tree are the defaults' fault: a site file is partial by design.
    fallback = str(dpath)
    if site_path is not None:
        spath = Path(site_path)
        site = _read_yaml(spath)
        tree = _merge(tree, site, origin, str(spath))
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            key = _loc_to_path(err["loc"])
            value = err.get("input", _MISSING) if err["type"] != "missing" else _MISSING
            problems.append(
                Problem(_file_for(key, origin, fallback), key, value, _allowed_text(err))
            )
        raise ConfigError(problems) from None
    problems = []
    for key, value, allowed in _cross_checks(cfg):
        # A rule that ties two keys is broken by whichever file set one of them: name the site
        # file when it supplied any key the rule mentions (the defaults are consistent alone).
        related = [key, *re.findall(r"\b((?:limits|loop|hardware|programs)[\w.\[\]]*\w)", allowed)]
        files = [_file_for(k, origin, fallback) for k in related]
        chosen = next((f for f in files if f != str(dpath)), files[0])
        problems.append(Problem(chosen, key, value, allowed))
    if problems:
        raise ConfigError(problems)
    return cfg
