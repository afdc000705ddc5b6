"""A bad config is refused with an error that names the file, the key path and what is allowed.

Every test passes ``env={}`` so an ``MCK_CONFIG`` in the developer's environment cannot leak in.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw import config as hc
from hw.config import Config, ConfigError, Problem, default_config_path, load_config

DEFAULT = str(default_config_path())


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def site(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def nested(key: str, raw: str) -> str:
    """``nested("limits.lease_ms", "49")`` -> a block-style YAML document setting that one key."""
    parts = key.split(".")
    lines = ["  " * depth + part + ":" for depth, part in enumerate(parts[:-1])]
    lines.append("  " * (len(parts) - 1) + f"{parts[-1]}: {raw}")
    return "\n".join(lines) + "\n"


def refuse(path: Path | str | None, default_path: Path | str | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(path, default_path, env={})
    problems = info.value.problems
    assert problems, "ConfigError without problems"
    # The message has one line per problem, each starting with the file that problem names.
    lines = str(info.value).splitlines()
    assert len(lines) == len(problems)
    for line, p in zip(lines, problems):
        assert line == str(p)
        assert line.startswith(f"{p.file}: ")
    return problems


def refuse_text(tmp_path: Path, text: str) -> tuple[Path, list[Problem]]:
    path = site(tmp_path, text)
    return path, refuse(path)


def only(problems: list[Problem], key: str) -> Problem:
    hits = [p for p in problems if p.key == key]
    assert len(hits) == 1, f"expected one problem at {key!r}, got {problems}"
    return hits[0]


def assert_problem(problems: list[Problem], file: Path | str, key: str, *allowed: str) -> Problem:
    p = only(problems, key)
    assert p.file == str(file), p
    for part in allowed:
        assert part in p.allowed, p
    return p


STEP = {
    "zone": "cheeks",
    "motion": "glide",
    "duration_s": 15,
    "frequency_hz": 10,
    "pulse_width_ms": 40,
    "max_level": 4,
    "relocate_cue_s": 5,
    "text": "Glide from beside the nose out towards the ear.",
}
DROP = object()


def step(**over: object) -> dict:
    out = {**STEP, **over}
    return {k: v for k, v in out.items() if v is not DROP}


def program(pid: str = "p1", steps: list[dict] | None = None, **over: object) -> dict:
    out = {
        "id": pid,
        "name": "Test program",
        "description": "For tests.",
        "steps": [step()] if steps is None else steps,
        **over,
    }
    return {k: v for k, v in out.items() if v is not DROP}


def programs_site(tmp_path: Path, *progs: dict, extra: str = "") -> Path:
    text = yaml.safe_dump({"programs": list(progs)}, sort_keys=False) + extra
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Wrong types
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ('limits: {max_current_ua: "400"}', "limits.max_current_ua", "valid number"),
        ("limits: {max_current_ua: 400 uA}", "limits.max_current_ua", "valid number"),
        ("limits: {level_count: 10.5}", "limits.level_count", "valid integer"),
        ("limits: {level_count: 10.0}", "limits.level_count", "valid integer"),
        ("loop: {rate_hz: 2000.0}", "loop.rate_hz", "valid integer"),
        ("limits: {max_current_ua: true}", "limits.max_current_ua", "valid number"),
        ("limits: {level_count: false}", "limits.level_count", "valid integer"),
        ("hardware: {pins: {buzzer: true}}", "hardware.pins.buzzer", "valid integer"),
        ("limits: [1, 2]", "limits", "valid dictionary"),
        ("hardware: {pins: [17, 27]}", "hardware.pins", "valid dictionary"),
        ("limits: {lease_ms: null}", "limits.lease_ms", "valid number"),
        ("limits: {lease_ms: }", "limits.lease_ms", "valid number"),
        ("limits: null", "limits", "valid dictionary"),
        ("ui: {fullscreen: 1}", "ui.fullscreen", "valid boolean"),
        ('ui: {fullscreen: "yes"}', "ui.fullscreen", "valid boolean"),
        ("programs: {id: demo}", "programs", "must be a list"),
        ("limits: {max_current_ua: 2024-01-01}", "limits.max_current_ua", "valid number"),
        ("limits: {max_current_ua: [400]}", "limits.max_current_ua", "valid number"),
        ("limits: {max_current_ua: 1e3}", "limits.max_current_ua", "valid number"),  # a str in YAML
    ],
)
def test_wrong_type_is_refused(tmp_path, text, key, allowed):
    path, problems = refuse_text(tmp_path, text + "\n")
    assert_problem(problems, path, key, allowed)
    assert len(problems) == 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("ui: {rotation: false}", "ui.rotation"),
        ("ui: {rotation: 90.0}", "ui.rotation"),
        ("hardware: {dac_spi: {mode: 3.0}}", "hardware.dac_spi.mode"),
    ],
)
def test_wrong_type_for_a_choice_is_refused(tmp_path, text, key):
    path, problems = refuse_text(tmp_path, text + "\n")
    assert_problem(problems, path, key)


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("ui: {rotation: 45}", "ui.rotation", "0, 90, 180 or 270"),
        ('ui: {rotation: "90"}', "ui.rotation", "0, 90, 180 or 270"),
        ("hardware: {dac_spi: {mode: 1}}", "hardware.dac_spi.mode", "0 or 3"),
    ],
)
def test_value_not_among_the_choices_is_refused(tmp_path, text, key, allowed):
    path, problems = refuse_text(tmp_path, text + "\n")
    assert_problem(problems, path, key, "must be one of", allowed)


# --------------------------------------------------------------------------------------------
# Out of range, against every ceiling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw", "allowed"),
    [
        ("limits.max_current_ua", "1000.1", "at most 1000"),
        ("limits.max_current_ua", "5000", "at most 1000"),
        ("limits.max_current_ua", "0", "above 0"),
        ("limits.max_current_ua", "-5", "above 0"),
        ("limits.overcurrent_trip_ua", "1100.01", "at most 1100"),
        ("limits.overcurrent_trip_ua", "1500", "at most 1100"),
        ("limits.hw_overcurrent_ua", "1200.5", "at most 1200"),
        ("limits.hw_overcurrent_ua", "-1", "above 0"),
        ("limits.lease_ms", "49", "at least 50"),
        ("limits.lease_ms", "2001", "at most 2000"),
        ("limits.lease_ms", "-300", "at least 50"),
        ("limits.ramp_up_s", "0.5", "at least 1"),
        ("limits.ramp_up_s", "3.5", "at most 3"),
        ("limits.ramp_down_s", "0.01", "at least 0.05"),
        ("limits.level_count", "2", "at least 3"),
        ("limits.level_count", "21", "at most 20"),
        ("limits.probe_current_ua", "51", "at most 50"),
        ("limits.max_net_charge_uc", "1000.5", "at most 1000"),
        ("limits.max_output_s", "3601", "at most 3600"),
        ("limits.daily_max_s", "10801", "at most 10800"),
        ("limits.overcurrent_debounce_ms", "10.5", "at most 10"),
        ("limits.level_min_ua", "-40", "above 0"),
        ("loop.rate_hz", "499", "at least 500"),
        ("loop.rate_hz", "5001", "at most 5000"),
        ("loop.stall_ms", "25", "at most 20"),
        ("loop.stall_ms", "1.5", "at least 2"),
        ("loop.realtime_priority", "100", "at most 99"),
        ("hardware.pins.buzzer", "28", "at most 27"),
        ("hardware.pins.buzzer", "-1", "at least 2"),
        ("hardware.adc_channels.reference", "8", "at most 7"),
        ("hardware.front_end.dac_ua_per_code", "0.8", "at most 0.7"),
        ("hardware.post.check_current_ua", "501", "at most 500"),
        ("ui.blank_after_s", "5", "at least 10"),
    ],
)
def test_out_of_range_is_refused(tmp_path, key, raw, allowed):
    path, problems = refuse_text(tmp_path, nested(key, raw))
    p = assert_problem(problems, path, key, allowed, "ceiling")
    assert p.value == yaml.safe_load(raw)
    assert len(problems) == 1


@pytest.mark.parametrize("raw", [".nan", ".NaN", ".inf", "-.inf", "+.Inf"])
@pytest.mark.parametrize(
    "key",
    [
        "limits.max_current_ua",
        "limits.overcurrent_trip_ua",
        "limits.lease_ms",
        # No upper bound here: only the finite check stops inf.
        "hardware.front_end.electrode_v_per_code",
    ],
)
def test_nan_and_infinity_are_refused(tmp_path, key, raw):
    path, problems = refuse_text(tmp_path, nested(key, raw))
    assert_problem(problems, path, key, "finite")


# --------------------------------------------------------------------------------------------
# Unknown keys at every level
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour: red", "colour"),
        ("limits: {max_curent_ua: 300}", "limits.max_curent_ua"),
        ("loop: {rate: 2000}", "loop.rate"),
        ("hardware: {pins: {gpio_relay: 4}}", "hardware.pins.gpio_relay"),
        ("hardware: {front_end: {gain: 2}}", "hardware.front_end.gain"),
        ("hardware: {dac_spi: {cs: 1}}", "hardware.dac_spi.cs"),
        ("ui: {theme: dark}", "ui.theme"),
    ],
)
def test_unknown_key_is_refused(tmp_path, text, key):
    path, problems = refuse_text(tmp_path, text + "\n")
    assert_problem(problems, path, key, "unknown key")


def test_unknown_key_in_a_program_step_is_refused(tmp_path):
    path = programs_site(tmp_path, program(steps=[step(), step(volume=3)]))
    assert_problem(refuse(path), path, "programs[0].steps[1].volume", "unknown key")


def test_unknown_key_in_a_program_is_refused(tmp_path):
    path = programs_site(tmp_path, program(author="me"))
    assert_problem(refuse(path), path, "programs[0].author", "unknown key")


# --------------------------------------------------------------------------------------------
# Files that are not a YAML mapping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("limits:\n  max_current_ua: 300\n lease_ms: 400\n", 3),  # bad indentation
        ("limits: {max_current_ua: [300}\n", 1),  # unclosed bracket
        ("limits: {max_current_ua: 300\n", 2),  # unclosed brace
        ("limits:\n\tmax_current_ua: 300\n", 2),  # a tab
        ("ui: {fullscreen: 'yes}\n", 2),  # unclosed quote
    ],
)
def test_broken_yaml_is_refused_with_its_position(tmp_path, text, line):
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    (p,) = refuse(path)
    assert p.file == str(path)
    assert p.key.startswith(f"line {line}, column ")
    assert p.allowed.startswith("broken YAML")


@pytest.mark.parametrize(
    ("text", "dup", "line"),
    [
        ("limits: {lease_ms: 400}\nlimits: {ramp_up_s: 2}\n", "limits", 2),
        ("limits:\n  lease_ms: 400\n  lease_ms: 4000\n", "lease_ms", 3),
        ("hardware:\n  pins: {buzzer: 13, buzzer: 14}\n", "buzzer", 2),
    ],
)
def test_duplicate_key_is_refused(tmp_path, text, dup, line):
    path = site(tmp_path, text)
    (p,) = refuse(path)
    assert p.file == str(path)
    assert p.key.startswith(f"line {line}, ")
    assert f"duplicate key {dup!r}" in p.allowed


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_is_refused(tmp_path, text):
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    (p,) = refuse(path)
    assert (p.file, p.key) == (str(path), "")
    assert "empty" in p.allowed and "mapping" in p.allowed


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- limits\n- loop\n", "list"), ("42\n", "int"), ("hello\n", "str"), ("3.5\n", "float")],
)
def test_top_level_that_is_not_a_mapping_is_refused(tmp_path, text, kind):
    path = site(tmp_path, text)
    (p,) = refuse(path)
    assert (p.file, p.key, p.value) == (str(path), "", kind)
    assert "top level must be a mapping" in p.allowed
    assert str(p).startswith(f"{path}: <top level> = {kind!r}: ")


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nope.yaml"
    (p,) = refuse(path)
    assert (p.file, p.key, p.allowed) == (str(path), "", "file not found")
    assert str(p) == f"{path}: <top level> = <missing>: file not found"


def test_missing_default_file_is_refused(tmp_path):
    path = tmp_path / "no-defaults.yaml"
    (p,) = refuse(None, default_path=path)
    assert (p.file, p.allowed) == (str(path), "file not found")


def test_directory_is_refused(tmp_path):
    (p,) = refuse(tmp_path)
    assert (p.file, p.key) == (str(tmp_path), "")
    assert "cannot be read" in p.allowed


@pytest.mark.parametrize("data", [b"limits: {lease_ms: 4\xff0}\n", b"\xfe\xff\x00l", b"ui: \xe9\n"])
def test_non_utf8_file_is_refused(tmp_path, data):
    path = tmp_path / "site.yaml"
    path.write_bytes(data)
    (p,) = refuse(path)
    assert (p.file, p.key) == (str(path), "")
    assert "cannot be read" in p.allowed and "utf-8" in p.allowed


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "limits: {[a, b]: 1}\n", "? {a: 1}\n: 1\n"])
def test_unhashable_key_is_refused(tmp_path, text):
    path = site(tmp_path, text)
    (p,) = refuse(path)
    assert p.file == str(path)


def test_deeply_nested_yaml_is_refused(tmp_path):
    path = site(tmp_path, "limits: " + "[" * 1000 + "]" * 1000 + "\n")
    problems = refuse(path)
    assert problems[0].file == str(path)


# --------------------------------------------------------------------------------------------
# Cross-field rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        (
            "limits: {overcurrent_trip_ua: 400}",  # == max_current_ua
            "limits.overcurrent_trip_ua",
            "must be above limits.max_current_ua (400",
        ),
        (
            "limits: {overcurrent_trip_ua: 390, hw_overcurrent_ua: 395}",
            "limits.overcurrent_trip_ua",
            "must be above limits.max_current_ua",
        ),
        (
            "limits: {hw_overcurrent_ua: 479.9}",
            "limits.hw_overcurrent_ua",
            "must be at least limits.overcurrent_trip_ua (480",
        ),
        (
            "limits: {level_max_ua: 400.5}",
            "limits.level_max_ua",
            "must be at most limits.max_current_ua (400",
        ),
        ("limits: {level_min_ua: 400}", "limits.level_min_ua", "below limits.level_max_ua (400"),
        ("limits: {probe_current_ua: 40}", "limits.probe_current_ua", "below limits.level_min_ua"),
        ("limits: {follow_min_ua: 41}", "limits.follow_min_ua", "at most limits.level_min_ua"),
        ("hardware: {pins: {buzzer: 17}}", "hardware.pins.buzzer", "hardware.pins.output_enable"),
        ("hardware: {pins: {charger: 5}}", "hardware.pins.charger", "hardware.pins.estop"),
        ("hardware: {pins: {buzzer: 7}}", "hardware.pins.buzzer", "GPIO 7-11"),
        ("hardware: {pins: {estop: 9}}", "hardware.pins.estop", "GPIO 7-11"),
        ("hardware: {pins: {output_enable: 11}}", "hardware.pins.output_enable", "GPIO 7-11"),
        (
            "hardware: {adc_channels: {reference: 0}}",
            "hardware.adc_channels.reference",
            "already used by current",
        ),
        ("hardware: {adc_spi: {device: 0}}", "hardware.adc_spi.device", "different chip selects"),
        (
            "hardware: {adc_spi: {max_speed_hz: 2000001}}",
            "hardware.adc_spi.max_speed_hz",
            "2 MHz",
        ),
        (
            "hardware: {front_end: {dac_ua_per_code: 0.6}}",
            "hardware.front_end.dac_ua_per_code",
            "1000 uA hardware ceiling",
        ),
        (
            "limits: {max_current_ua: 600, level_max_ua: 600, overcurrent_trip_ua: 700,"
            " hw_overcurrent_ua: 800}\nhardware: {front_end: {adc_ua_per_code: 0.3}}",
            "hardware.front_end.adc_ua_per_code",
            "beyond limits.overcurrent_trip_ua",
        ),
        ("loop: {rate_hz: 500, stall_ms: 7.9}", "loop.stall_ms", "at least 4 ticks (8.0 ms)"),
        ("loop: {rate_hz: 5000, spin_us: 100}", "loop.spin_us", "under half a tick"),
    ],
)
def test_cross_field_rule_is_enforced(tmp_path, text, key, allowed):
    path, problems = refuse_text(tmp_path, text + "\n")
    assert_problem(problems, path, key, allowed)


def test_same_chip_select_on_another_bus_is_allowed(tmp_path):
    cfg = load_config(site(tmp_path, "hardware: {adc_spi: {bus: 1, device: 0}}\n"), env={})
    assert (cfg.hardware.adc_spi.bus, cfg.hardware.adc_spi.device) == (1, 0)


def test_hw_threshold_equal_to_software_trip_is_allowed(tmp_path):
    cfg = load_config(site(tmp_path, "limits: {hw_overcurrent_ua: 480}\n"), env={})
    assert cfg.limits.hw_overcurrent_ua == cfg.limits.overcurrent_trip_ua == 480


def test_asymmetric_dac_full_scale_above_ceiling_is_refused(tmp_path):
    # (4095 - 1800) codes * 0.58 uA = 1331 uA on the positive side, well above the 1000 uA ceiling.
    path = site(tmp_path, "hardware: {front_end: {dac_zero_code: 1800, dac_ua_per_code: 0.58}}\n")
    assert_problem(refuse(path), path, "hardware.front_end.dac_ua_per_code", "ceiling")


# --------------------------------------------------------------------------------------------
# Programs
# --------------------------------------------------------------------------------------------


def test_duplicate_program_ids_are_refused(tmp_path):
    path = programs_site(tmp_path, program("a"), program("b"), program("a"))
    assert_problem(refuse(path), path, "programs[2].id", "duplicate of programs[0].id")


@pytest.mark.parametrize("pid", ["Full-Face", "-lead", "with space", "a" * 41, "", "x_y", "dé"])
def test_bad_program_id_is_refused(tmp_path, pid):
    path = programs_site(tmp_path, program(pid))
    assert_problem(refuse(path), path, "programs[0].id", "pattern")


@pytest.mark.parametrize(
    ("over", "key", "allowed"),
    [
        ({"zone": "ears"}, "zone", "'forehead'"),
        ({"zone": "Cheeks"}, "zone", "'neck'"),
        ({"motion": "tap"}, "motion", "'glide' or 'hold'"),
        ({"motion": "Glide"}, "motion", "'glide' or 'hold'"),
        ({"frequency_hz": 10, "pulse_width_ms": 60}, "pulse_width_ms", "two phases must fit"),
        ({"frequency_hz": 500, "pulse_width_ms": 1.5}, "pulse_width_ms", "at most 1"),
        ({"pulse_width_ms": 40.25}, "pulse_width_ms", "whole number of loop ticks (0.5 ms)"),
        ({"pulse_width_ms": 0.75}, "pulse_width_ms", "whole number of loop ticks"),
        ({"max_level": 11}, "max_level", "at most limits.level_count (10)"),
        ({"max_level": 21}, "max_level", "at most 20"),
        ({"max_level": 0}, "max_level", "at least 1"),
        ({"duration_s": 4}, "duration_s", "at least 5"),
        ({"frequency_hz": 501}, "frequency_hz", "at most 500"),
        ({"relocate_cue_s": 16}, "relocate_cue_s", "duration_s (15"),
        ({"text": DROP}, "text", "required key is missing"),
        ({"text": ""}, "text", "at least 1 character"),
        ({"text": None}, "text", "valid string"),
        ({"zone": DROP}, "zone", "required key is missing"),
    ],
)
def test_bad_step_is_refused(tmp_path, over, key, allowed):
    path = programs_site(tmp_path, program(steps=[step(), step(**over)]))
    assert_problem(refuse(path), path, f"programs[0].steps[1].{key}", allowed)


def test_max_level_is_checked_against_a_site_level_count(tmp_path):
    prog = program(steps=[step(max_level=6)])
    path = programs_site(tmp_path, prog, extra="limits: {level_count: 5}\n")
    assert_problem(refuse(path), path, "programs[0].steps[0].max_level", "level_count (5)")


def test_program_longer_than_max_output_is_refused(tmp_path):
    steps = [step(duration_s=600), step(duration_s=600), step(duration_s=600.5)]
    path = programs_site(tmp_path, program("ok"), program("long", steps=steps))
    p = assert_problem(refuse(path), path, "programs[1].steps", "limits.max_output_s (1800")
    assert p.value == "1800.5 s in total"


def test_empty_steps_list_is_refused(tmp_path):
    path = programs_site(tmp_path, program(steps=[]))
    assert_problem(refuse(path), path, "programs[0].steps", "at least 1 item")


def test_empty_programs_list_is_refused(tmp_path):
    path = site(tmp_path, "programs: []\n")
    assert_problem(refuse(path), path, "programs", "at least 1 item")


@pytest.mark.parametrize("field", ["id", "name", "description", "steps"])
def test_program_missing_a_field_is_refused(tmp_path, field):
    path = programs_site(tmp_path, program(**{field: DROP}))
    assert_problem(refuse(path), path, f"programs[0].{field}", "required key is missing")


# --------------------------------------------------------------------------------------------
# Positive behaviour
# --------------------------------------------------------------------------------------------


def test_defaults_load():
    cfg = load_config(env={})
    assert isinstance(cfg, Config)
    assert cfg.limits.max_current_ua == 400
    assert cfg.limits.level_count == 10
    assert cfg.loop.rate_hz == 2000
    assert cfg.tick_s == pytest.approx(0.0005)
    assert [p.id for p in cfg.programs] == ["full-face-lift", "quick-tone", "demo"]
    assert cfg.program("demo").steps[0].zone == "cheeks"


def test_default_symlink_is_the_packaged_file():
    assert Path(DEFAULT).resolve() == (Path(__file__).parents[1] / "config/default.yaml").resolve()


def test_site_override_changes_only_what_it_names(tmp_path):
    base = load_config(env={}).model_dump()
    path = site(
        tmp_path,
        """\
        limits:
          lease_ms: 500
        hardware:
          pins: {buzzer: 13}
        """,
    )
    got = load_config(path, env={}).model_dump()
    assert got["limits"]["lease_ms"] == 500
    assert got["hardware"]["pins"]["buzzer"] == 13
    got["limits"]["lease_ms"] = base["limits"]["lease_ms"]
    got["hardware"]["pins"]["buzzer"] = base["hardware"]["pins"]["buzzer"]
    assert got == base


def test_empty_mapping_site_file_gives_the_defaults(tmp_path):
    assert load_config(site(tmp_path, "{}\n"), env={}) == load_config(env={})


def test_site_lists_replace_the_default_lists_whole(tmp_path):
    path = programs_site(tmp_path, program("only-one"))
    cfg = load_config(path, env={})
    assert [p.id for p in cfg.programs] == ["only-one"]
    assert len(cfg.programs[0].steps) == 1


def test_mck_config_env_selects_the_site_file(tmp_path):
    path = site(tmp_path, "limits: {lease_ms: 700}\n")
    assert load_config(env={"MCK_CONFIG": str(path)}).limits.lease_ms == 700
    # An explicit site path wins over the variable; an empty variable means "defaults only".
    other = site(tmp_path, "limits: {lease_ms: 800}\n", name="other.yaml")
    assert load_config(other, env={"MCK_CONFIG": str(path)}).limits.lease_ms == 800
    assert load_config(env={"MCK_CONFIG": ""}).limits.lease_ms == 300


def test_mck_config_errors_name_that_file(tmp_path):
    path = site(tmp_path, "limits: {lease_ms: 2001}\n", name="from-env.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(env={"MCK_CONFIG": str(path)})
    assert_problem(info.value.problems, path, "limits.lease_ms", "at most 2000")
    with pytest.raises(ConfigError) as info:
        load_config(env={"MCK_CONFIG": str(tmp_path / "gone.yaml")})
    assert info.value.problems[0].file == str(tmp_path / "gone.yaml")


@pytest.fixture
def broken_default(tmp_path):
    """A copy of the packaged defaults; ``edit(old, new)`` breaks it."""
    path = tmp_path / "default-copy.yaml"
    shutil.copyfile(DEFAULT, path)

    def edit(old: str, new: str) -> Path:
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, old
        path.write_text(text.replace(old, new), encoding="utf-8")
        return path

    return edit


def test_errors_name_the_file_each_value_came_from(tmp_path, broken_default):
    dpath = broken_default("  lease_ms: 300 ", "  lease_ms: 5 ")
    dpath = broken_default("    buzzer: 12\n", "    buzzer: 12\n    volume: 3\n")
    spath = site(tmp_path, "limits: {ramp_up_s: 3.5}\nui: {rotation: 45}\n")
    problems = refuse(spath, dpath)
    assert_problem(problems, dpath, "limits.lease_ms", "at least 50")
    assert_problem(problems, dpath, "hardware.pins.volume", "unknown key")
    assert_problem(problems, spath, "limits.ramp_up_s", "at most 3")
    assert_problem(problems, spath, "ui.rotation", "must be one of")
    assert len(problems) == 4


def test_cross_field_error_from_the_default_names_the_default(tmp_path, broken_default):
    dpath = broken_default("  hw_overcurrent_ua: 560", "  hw_overcurrent_ua: 470")
    spath = site(tmp_path, "limits: {lease_ms: 400}\n")
    assert_problem(refuse(spath, dpath), dpath, "limits.hw_overcurrent_ua", "overcurrent_trip_ua")


def test_broken_default_program_names_the_default(tmp_path, broken_default):
    dpath = broken_default("zone: brows, motion: hold", "zone: brows, motion: tap")
    assert_problem(
        refuse(site(tmp_path, "ui: {fullscreen: false}\n"), dpath),
        dpath,
        "programs[0].steps[1].motion",
        "'glide' or 'hold'",
    )


def test_broken_yaml_in_the_default_names_the_default(tmp_path, broken_default):
    dpath = broken_default("  lease_ms: 300 ", "  lease_ms: 300\n  lease_ms: 301 ")
    (p,) = refuse(site(tmp_path, "limits: {lease_ms: 400}\n"), dpath)
    assert p.file == str(dpath)
    assert "duplicate key 'lease_ms'" in p.allowed


def test_site_value_can_repair_a_bad_default(tmp_path, broken_default):
    dpath = broken_default("  lease_ms: 300 ", "  lease_ms: 5 ")
    cfg = load_config(site(tmp_path, "limits: {lease_ms: 400}\n"), dpath, env={})
    assert cfg.limits.lease_ms == 400


def test_key_missing_from_the_default_names_the_default(tmp_path, broken_default):
    dpath = broken_default("  lease_ms: 300 ", "  # lease_ms: 300 ")
    spath = site(tmp_path, "limits: {ramp_up_s: 2.5}\n")
    assert_problem(refuse(spath, dpath), dpath, "limits.lease_ms", "required key is missing")


def test_section_missing_from_the_default_names_the_default(tmp_path, broken_default):
    dpath = broken_default("\nui:\n", "\nnot_ui:\n")
    spath = site(tmp_path, "limits: {lease_ms: 400}\n")
    problems = refuse(spath, dpath)
    assert_problem(problems, dpath, "ui", "required key is missing")


def test_cross_field_error_caused_by_the_site_names_the_site(tmp_path):
    # Raising max_current_ua to 500 (site) puts it above the default trip (480): the site file
    # is the one to fix, but the only problem names the default file's overcurrent_trip_ua.
    spath = site(tmp_path, "limits: {max_current_ua: 500}\n")
    problems = refuse(spath)
    assert any(p.file == str(spath) for p in problems), problems


def test_config_error_lists_every_problem(tmp_path):
    path = site(
        tmp_path,
        """\
        limits:
          lease_ms: 49
          level_count: 21
          max_current_ua: "400"
          shiny: 1
        loop: {stall_ms: 25}
        ui: {rotation: 45}
        """,
    )
    problems = refuse(path)
    assert {p.key for p in problems} == {
        "limits.lease_ms",
        "limits.level_count",
        "limits.max_current_ua",
        "limits.shiny",
        "loop.stall_ms",
        "ui.rotation",
    }
    assert all(p.file == str(path) for p in problems)


def test_config_error_lists_every_cross_field_problem(tmp_path):
    path = site(
        tmp_path,
        "limits: {hw_overcurrent_ua: 470, probe_current_ua: 45}\nhardware: {pins: {buzzer: 8}}\n",
    )
    problems = refuse(path)
    assert {p.key for p in problems} == {
        "limits.hw_overcurrent_ua",
        "limits.probe_current_ua",
        "hardware.pins.buzzer",
    }


def test_error_line_format(tmp_path):
    path = site(tmp_path, "limits: {lease_ms: 49}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: limits.lease_ms = 49: must be at least 50.0 (a ceiling in hw/config.py)"
    )


def test_config_is_immutable():
    cfg = load_config(env={})
    with pytest.raises((TypeError, ValueError, AttributeError)):
        cfg.limits.max_current_ua = 1000  # type: ignore[misc]
    with pytest.raises((TypeError, ValueError, AttributeError)):
        cfg.limits = cfg.limits  # type: ignore[misc]
    with pytest.raises((TypeError, ValueError, AttributeError)):
        cfg.programs[0].steps[0].max_level = 20  # type: ignore[misc]
    assert cfg.limits.max_current_ua == 400


def test_config_lists_are_immutable():
    cfg = load_config(env={})
    with pytest.raises((TypeError, AttributeError)):
        cfg.programs[0].steps[0] = cfg.programs[2].steps[0]  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Property: any numeric limits either fail cleanly or stay inside the ceilings
# --------------------------------------------------------------------------------------------

_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-10, max_value=2500),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(),
)
_LIMIT_KEYS = [
    "max_current_ua",
    "overcurrent_trip_ua",
    "hw_overcurrent_ua",
    "lease_ms",
    "ramp_up_s",
    "level_count",
    "level_max_ua",
    "probe_current_ua",
    "max_output_s",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_LIMIT_KEYS), _NUMBERS, min_size=1))
def test_random_limits_fail_cleanly_or_stay_within_ceilings(values):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.yaml"
        path.write_text(yaml.safe_dump({"limits": values}), encoding="utf-8")
        try:
            cfg = load_config(path, env={})
        except ConfigError as e:
            assert e.problems
            for p in e.problems:
                assert p.file in (str(path), DEFAULT)
                assert p.key.startswith(("limits.", "programs[")), p
                assert p.allowed
            return
    lim = cfg.limits
    for key in _LIMIT_KEYS:
        value = getattr(lim, key)
        assert math.isfinite(value) and not isinstance(value, bool)
    assert 0 < lim.max_current_ua <= hc.CEIL_CURRENT_UA
    assert lim.max_current_ua < lim.overcurrent_trip_ua <= hc.CEIL_OVERCURRENT_TRIP_UA
    assert lim.overcurrent_trip_ua <= lim.hw_overcurrent_ua <= hc.CEIL_HW_OVERCURRENT_UA
    assert hc.LEASE_MS_RANGE[0] <= lim.lease_ms <= hc.LEASE_MS_RANGE[1]
    assert hc.RAMP_UP_S_RANGE[0] <= lim.ramp_up_s <= hc.RAMP_UP_S_RANGE[1]
    assert isinstance(lim.level_count, int)
    assert hc.LEVEL_COUNT_RANGE[0] <= lim.level_count <= hc.LEVEL_COUNT_RANGE[1]
    assert 0 < lim.probe_current_ua < lim.level_min_ua <= lim.level_max_ua <= lim.max_current_ua
    assert lim.probe_current_ua <= hc.CEIL_PROBE_UA
    assert 0 < lim.max_output_s <= hc.CEIL_OUTPUT_S
    for prog in cfg.programs:
        assert sum(s.duration_s for s in prog.steps) <= lim.max_output_s
        assert all(s.max_level <= lim.level_count for s in prog.steps)
