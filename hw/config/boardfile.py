"""The per-board file: what describes one board as built, written by ``python -m hw.calibrate``.

A board file holds the SPI settings, the GPIO pins, the ADC channels and the analog front end (scale
factors, calibration, comparator scale, test load, dead-man time, compliance, reference) of one
board. Only the calibration step writes it; a sha256 over a canonical form of its contents is
stored in the file, so a hand edit (or a damaged file) is refused. A site file cannot set any of
these keys: it could change the real current without touching ``limits`` (issue 6, item 4).

Format (YAML, every key required)::

    format: 1
    board_id: sim-1                 # [a-z0-9-], names the board in logs and the history
    method: nominal                 # nominal (design values) or measured (calibrated)
    written_utc: "2026-12-01T22:30:00Z"
    hardware: {dac_spi: ..., adc_spi: ..., pins: ..., adc_channels: ..., front_end: ...}
    sha256: <64 hex digits>         # sha256 of canonical(everything above), see ``checksum``

The values under ``hardware`` are validated by the models in ``hw.config`` (the in-memory shape is
``cfg.hardware.*`` as before). Where the board file lives: ``--board PATH`` or ``MCK_BOARD``; the
daemon on real hardware defaults to ``DEFAULT_BOARD_PATH`` and refuses to run without it; ``--sim``
uses the packaged file of the simulated board. Nothing here is read at import time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hw.config.yamlfile import _MISSING, ConfigError, Problem, _read_yaml

FORMAT = 1
DEFAULT_BOARD_PATH = Path("/etc/microcurrent-kiosk/board.yaml")
SIM_BOARD_NAME = "sim-board.yaml"
# The sections of ``hardware`` that describe the board. ``hardware.post`` (the self-test's
# tolerances) is not one: it stays in the packaged defaults and a site may only tighten it.
BOARD_SECTIONS = ("dac_spi", "adc_spi", "pins", "adc_channels", "front_end")
META_KEYS = ("format", "board_id", "method", "written_utc")
METHODS = ("nominal", "measured")
_DOMAIN = b"microcurrent-kiosk board file v1\n"  # so no other sha256 can pass for a board file


def sim_board_path() -> Path:
    """The packaged board file of the simulated board (the sim as built)."""
    return Path(str(resources.files("hw").joinpath(SIM_BOARD_NAME)))


def board_path_for(
    given: str | os.PathLike | None, *, sim: bool, env: Mapping[str, str] | None = None
) -> Path:
    """Which board file to load: ``given``, else ``MCK_BOARD``, else the packaged sim board for
    ``--sim`` and ``DEFAULT_BOARD_PATH`` on real hardware (which must exist: no file, no output).
    Raises :class:`ConfigError` when real hardware is pointed at the simulated board's file."""
    env = os.environ if env is None else env
    if given:
        path = Path(given)
    elif env.get("MCK_BOARD"):
        path = Path(env["MCK_BOARD"])
    else:
        return sim_board_path() if sim else DEFAULT_BOARD_PATH
    if not sim and path.resolve() == sim_board_path().resolve():
        # The simulated board's file describes no real board: never drive hardware with it.
        raise _problem(path, "", _MISSING, "is the simulated board's file; it needs --sim")
    return path


def canonical(body: Mapping[str, Any]) -> bytes:
    """The bytes the checksum covers: the parsed values (not the text), keys sorted, no spaces.

    Comments and layout may change freely; any value, key or type change (400 vs 400.0) changes
    the checksum."""
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def checksum(body: Mapping[str, Any]) -> str:
    """sha256 (hex) of a board file's contents without its ``sha256`` key."""
    return hashlib.sha256(_DOMAIN + canonical(body)).hexdigest()


def _leaves(tree: Any, prefix: str):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def _problem(path: Path, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError([Problem(str(path), key, value, allowed)])


def read_board(path: str | os.PathLike) -> dict:
    """Read and verify a board file; return its ``hardware`` mapping (values not yet validated).

    Raises :class:`ConfigError` naming the file and the key: missing file, broken YAML, unknown or
    missing top-level keys, a bad ``format``/``board_id``/``method``, or a checksum that does not
    match the contents."""
    path = Path(path)
    data = _read_yaml(path)
    problems = []
    for key in data:
        if key not in (*META_KEYS, "hardware", "sha256"):
            problems.append(
                Problem(str(path), str(key), data[key], "unknown key (not part of a board file)")
            )
    for key in (*META_KEYS, "hardware", "sha256"):
        if key not in data:
            problems.append(Problem(str(path), key, _MISSING, "required key is missing"))
    if problems:
        raise ConfigError(problems)
    if type(data["format"]) is not int or data["format"] != FORMAT:
        raise _problem(path, "format", data["format"], f"must be {FORMAT}")
    bid = data["board_id"]
    if not isinstance(bid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", bid):
        raise _problem(path, "board_id", bid, "must be 1-40 of [a-z0-9-], starting alphanumeric")
    if data["method"] not in METHODS:
        raise _problem(path, "method", data["method"], "must be 'nominal' or 'measured'")
    if not isinstance(data["written_utc"], str):
        raise _problem(path, "written_utc", data["written_utc"], "must be a quoted ISO time")
    hw = data["hardware"]
    if not isinstance(hw, dict):
        raise _problem(path, "hardware", hw, "must be a mapping of the board's sections")
    stored = data["sha256"]
    if not isinstance(stored, str) or not re.fullmatch(r"[0-9a-f]{64}", stored):
        raise _problem(path, "sha256", stored, "must be 64 lowercase hex digits")
    body = {k: v for k, v in data.items() if k != "sha256"}
    for key, value in _leaves(hw, "hardware"):
        if isinstance(value, float) and not math.isfinite(value):
            raise _problem(path, key, value, "must be a finite number")
    actual = checksum(body)
    if actual != stored:
        raise _problem(
            path,
            "sha256",
            stored,
            f"does not match the contents (sha256 {actual[:12]}...): the file was changed after "
            "calibration; re-run `python -m hw.calibrate` instead of editing it",
        )
    for section in hw:
        if section not in BOARD_SECTIONS:
            raise _problem(
                path,
                f"hardware.{section}",
                hw[section],
                "unknown key (a board file holds " + ", ".join(BOARD_SECTIONS) + ")",
            )
    return hw


def board_text(body: Mapping[str, Any]) -> str:
    """The YAML text of a board file for ``body`` (meta + hardware), with its checksum."""
    out = dict(body)
    out["sha256"] = checksum(body)
    head = (
        "# microcurrent-kiosk board file, written by `python -m hw.calibrate`. DO NOT EDIT:\n"
        "# the sha256 below covers every value; re-run the calibration step to change one.\n"
    )
    return head + yaml.safe_dump(out, sort_keys=False, default_flow_style=False, width=100)


def write_board(path: str | os.PathLike, body: Mapping[str, Any]) -> Path:
    """Write a board file atomically (temp file, fsync, rename) after checking it reads back."""
    path = Path(path)
    text = board_text(body)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        read_board(tmp)  # what we wrote must verify, or nothing replaces the old file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
