"""What a site file may change, and which way; and the board's keys, which neither the packaged
defaults nor a site file may hold (they belong in the board file)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hw.config.boardfile import BOARD_SECTIONS
from hw.config.yamlfile import Problem

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
