"""What the history stores and returns, and the checks every argument passes before anything is
written: dose summaries, stored records, the ways a treatment may end."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: How a treatment may end. ``'interrupted'`` is what :meth:`History.recover_interrupted` writes.
END_REASONS = frozenset({"finished", "stopped", "fault", "estop", "interrupted"})

#: A day counts towards :meth:`History.streak_days` with a treatment of at least this many seconds.
STREAK_MIN_ACTIVE_S = 60.0

DAMAGED_EVENT_CODE = "HISTORY_DAMAGED"

EVENT_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_LIMIT = 100_000
MAX_ROW_ID = 2**63 - 1  # SQLite's rowid range


class HistoryError(RuntimeError):
    """The history file cannot be used (missing directory, permissions, locked, I/O error).

    Raised instead of setting the file aside: a file we merely cannot read is not damaged.
    """


# --------------------------------------------------------------------------------------------
# Value types and validation
# --------------------------------------------------------------------------------------------


def _number(
    name: str, value: object, *, signed: bool = False, max_value: float | None = None
) -> float:
    # bool is an int subclass; True as a charge is always a bug.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number!r}")
    if not signed and number < 0:
        raise ValueError(f"{name} must not be negative, got {number!r}")
    if max_value is not None and number > max_value:
        raise ValueError(f"{name} must be at most {max_value:g}, got {number!r}")
    return number


def check_text(name: str, value: object, *, max_len: int = 200) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}")
    if any(ord(ch) < 32 for ch in value):
        raise ValueError(f"{name} must not contain control characters: {value!r}")
    # The plain str value, also for a StrEnum such as a fault code.
    return str.__str__(value)


def row_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROW_ID:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_LIMIT:
        raise ValueError(f"{name} must be an int from 1 to {_MAX_LIMIT}, got {value!r}")
    return value


def _set_floats(obj: object, names: Sequence[str], **kwargs: Any) -> None:
    for name in names:
        # Frozen dataclass: normalise ints to float once, here.
        object.__setattr__(obj, name, _number(name, getattr(obj, name), **kwargs))


@dataclass(frozen=True)
class TreatmentSummary:
    """Whole-treatment dose figures so far (or final).

    ``active_s``: seconds of output with good contact. ``charge_uc``: total charge delivered in
    microcoulombs (sum of |I| dt), never decreasing within a treatment. ``net_dc_charge_uc``:
    signed net charge in microcoulombs. ``mean_current_ua``/``peak_current_ua``: magnitude of the
    output current in microamps. ``contact_quality_pct``: 0-100.
    """

    active_s: float
    charge_uc: float
    net_dc_charge_uc: float
    mean_current_ua: float
    peak_current_ua: float
    contact_quality_pct: float

    def __post_init__(self) -> None:
        validate_treatment_summary(self)


@dataclass(frozen=True)
class ZoneSummary:
    """One zone's figures within a treatment; units as in :class:`TreatmentSummary`."""

    zone: str
    active_s: float
    charge_uc: float
    mean_current_ua: float
    peak_current_ua: float
    contact_quality_pct: float

    def __post_init__(self) -> None:
        _validate_zone_summary(self)


def validate_treatment_summary(summary: object) -> TreatmentSummary:
    if not isinstance(summary, TreatmentSummary):
        raise ValueError(f"summary must be a TreatmentSummary, got {type(summary).__name__}")
    _set_floats(summary, ("active_s", "charge_uc", "mean_current_ua", "peak_current_ua"))
    _set_floats(summary, ("net_dc_charge_uc",), signed=True)
    _set_floats(summary, ("contact_quality_pct",), max_value=100.0)
    return summary


def _validate_zone_summary(zone: object) -> ZoneSummary:
    if not isinstance(zone, ZoneSummary):
        raise ValueError(f"zones must hold ZoneSummary items, got {type(zone).__name__}")
    object.__setattr__(zone, "zone", check_text("zone", zone.zone, max_len=64))
    _set_floats(zone, ("active_s", "charge_uc", "mean_current_ua", "peak_current_ua"))
    _set_floats(zone, ("contact_quality_pct",), max_value=100.0)
    return zone


def validate_zones(zones: object) -> list[ZoneSummary]:
    if isinstance(zones, str | bytes) or not isinstance(zones, Sequence):
        raise ValueError(f"zones must be a list of ZoneSummary, got {type(zones).__name__}")
    checked = [_validate_zone_summary(zone) for zone in zones]
    names = [zone.zone for zone in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"zones must be unique within one call, repeated: {duplicates}")
    return checked


@dataclass(frozen=True)
class TreatmentRecord:
    """A stored treatment. Times are epoch seconds; ``ended_at``/``end_reason`` are None while
    it runs. ``contact_quality_pct`` is None until the first checkpoint. ``zones`` are sorted by
    zone name."""

    id: int
    program_id: str
    program_name: str
    started_at: float
    ended_at: float | None
    end_reason: str | None
    active_s: float
    charge_uc: float
    net_dc_charge_uc: float
    mean_current_ua: float
    peak_current_ua: float
    contact_quality_pct: float | None
    fault_code: str | None
    updated_at: float
    zones: tuple[ZoneSummary, ...] = field(default=())


@dataclass(frozen=True)
class EventRecord:
    """A stored event; ``ts`` is epoch seconds."""

    id: int
    ts: float
    kind: str
    code: str
    message: str
    treatment_id: int | None


def not_decreasing(what: str, active_s: float, charge_uc: float, new: Any) -> None:
    if new.active_s < active_s or new.charge_uc < charge_uc:
        raise ValueError(
            f"{what}: active_s/charge_uc may not decrease (stored {active_s!r}/{charge_uc!r},"
            f" got {new.active_s!r}/{new.charge_uc!r})"
        )
