"""Typed, range-checked configuration with ceilings that no YAML can raise.

Three files make one configuration:

* the packaged defaults (``config/default.yaml``, shipped as ``hw/default.yaml``): limits, loop,
  the self-test's tolerances, programs, ui;
* the board file (``hw.config.boardfile``): what describes one board as built (SPI, pins, ADC
  channels, front-end scale factors), written by the calibration step and protected by a checksum;
* an optional site file, merged over the defaults (mappings key by key, lists replaced whole). It
  may set ``ui`` and ``programs``, and may move a limit only in its safer direction from the
  packaged value (``SAFER``); it can never touch the board's keys.

The merged tree is validated by the models (hw/config/model.py) in strict mode: wrong types,
unknown keys, values outside the code ceilings and inconsistent combinations (hw/config/checks.py)
are all errors. A bad config raises :class:`ConfigError`, which names the file, the key path, the
value and what is allowed; the daemon then refuses to drive any output. Nothing here is read at
import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hw.config import boardfile
from hw.config.checks import _cross_checks
from hw.config.model import (
    CEIL_CURRENT_UA,
    CEIL_DAILY_S,
    CEIL_HW_OVERCURRENT_UA,
    CEIL_NET_CHARGE_UC,
    CEIL_OUTPUT_S,
    CEIL_OVERCURRENT_TRIP_UA,
    CEIL_PROBE_UA,
    DEBOUNCE_MS_RANGE,
    FREQ_HZ_RANGE,
    LEASE_MS_RANGE,
    LEVEL_COUNT_RANGE,
    LOOP_HZ_RANGE,
    MAX_IMPEDANCE_OHM_RANGE,
    MIN_IMPEDANCE_OHM_RANGE,
    PULSE_WIDTH_MS_RANGE,
    RAMP_DOWN_S_RANGE,
    RAMP_UP_S_RANGE,
    STAGE_FULL_SCALE_UA,
    STALL_MS_RANGE,
    STEP_S_RANGE,
    ZONES,
    AdcChannels,
    Config,
    FrontEnd,
    Hardware,
    Limits,
    Loop,
    Pins,
    Post,
    Program,
    SpiDevice,
    Step,
    Ui,
)
from hw.config.site import (
    HIGHER,
    LOWER,
    SAFER,
    SITE_SECTIONS,
    _direction_problems,
    _take_board_keys,
)
from hw.config.yamlfile import (
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

# The names other code imports from hw.config (the models and ceilings live in model.py, the
# rules between keys in checks.py, what a site file may change in site.py).
__all__ = [
    "CEIL_CURRENT_UA",
    "CEIL_DAILY_S",
    "CEIL_HW_OVERCURRENT_UA",
    "CEIL_NET_CHARGE_UC",
    "CEIL_OUTPUT_S",
    "CEIL_OVERCURRENT_TRIP_UA",
    "CEIL_PROBE_UA",
    "DEBOUNCE_MS_RANGE",
    "FREQ_HZ_RANGE",
    "HIGHER",
    "LEASE_MS_RANGE",
    "LEVEL_COUNT_RANGE",
    "LOOP_HZ_RANGE",
    "LOWER",
    "MAX_IMPEDANCE_OHM_RANGE",
    "MIN_IMPEDANCE_OHM_RANGE",
    "PULSE_WIDTH_MS_RANGE",
    "RAMP_DOWN_S_RANGE",
    "RAMP_UP_S_RANGE",
    "SAFER",
    "SITE_SECTIONS",
    "STAGE_FULL_SCALE_UA",
    "STALL_MS_RANGE",
    "STEP_S_RANGE",
    "ZONES",
    "AdcChannels",
    "Config",
    "ConfigError",
    "FrontEnd",
    "Hardware",
    "Limits",
    "Loop",
    "Pins",
    "Post",
    "Problem",
    "Program",
    "SpiDevice",
    "Step",
    "Ui",
    "default_config_path",
    "load_config",
    "SOURCED_SECTIONS",
]


def default_config_path() -> Path:
    """Where the packaged defaults live (works from a checkout and from an installed wheel)."""
    return Path(str(resources.files("hw").joinpath("default.yaml")))


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
    cfg._sources = {k: _file_for(k, origin, fallback(k)) for k in _leaf_keys(cfg)}
    return cfg


# The sections whose keys carry the file they came from (what the service area lists).
SOURCED_SECTIONS = ("limits", "loop", "ui")


def _leaf_keys(cfg: Config) -> list[str]:
    """Every dotted key of SOURCED_SECTIONS."""
    out = []
    for section in SOURCED_SECTIONS:
        for name in type(getattr(cfg, section)).model_fields:
            out.append(f"{section}.{name}")
    return out
