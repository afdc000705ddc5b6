"""The history's SQLite schema: tables, migrations, column orders, and the check that a file is a
usable history (:func:`diagnose`)."""

from __future__ import annotations

import datetime as _dt
import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 2

_V1_TABLES = frozenset({"treatments", "treatment_zones", "events"})

_SCHEMA_V1 = """
CREATE TABLE treatments (
    id                  INTEGER PRIMARY KEY,
    program_id          TEXT NOT NULL,
    program_name        TEXT NOT NULL,
    started_at          REAL NOT NULL,
    ended_at            REAL,
    end_reason          TEXT,
    active_s            REAL NOT NULL DEFAULT 0 CHECK (active_s >= 0),
    charge_uc           REAL NOT NULL DEFAULT 0 CHECK (charge_uc >= 0),
    net_dc_charge_uc    REAL NOT NULL DEFAULT 0,
    mean_current_ua     REAL NOT NULL DEFAULT 0 CHECK (mean_current_ua >= 0),
    peak_current_ua     REAL NOT NULL DEFAULT 0 CHECK (peak_current_ua >= 0),
    contact_quality_pct REAL CHECK (contact_quality_pct BETWEEN 0 AND 100),
    fault_code          TEXT,
    updated_at          REAL NOT NULL,
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE INDEX treatments_open ON treatments (id) WHERE ended_at IS NULL;
CREATE INDEX treatments_started_at ON treatments (started_at);
CREATE TABLE treatment_zones (
    treatment_id        INTEGER NOT NULL REFERENCES treatments (id),
    zone                TEXT NOT NULL,
    active_s            REAL NOT NULL CHECK (active_s >= 0),
    charge_uc           REAL NOT NULL CHECK (charge_uc >= 0),
    mean_current_ua     REAL NOT NULL CHECK (mean_current_ua >= 0),
    peak_current_ua     REAL NOT NULL CHECK (peak_current_ua >= 0),
    contact_quality_pct REAL NOT NULL CHECK (contact_quality_pct BETWEEN 0 AND 100),
    UNIQUE (treatment_id, zone)
);
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    ts           REAL NOT NULL,
    kind         TEXT NOT NULL,
    code         TEXT NOT NULL,
    message      TEXT NOT NULL,
    treatment_id INTEGER REFERENCES treatments (id)
);
CREATE INDEX events_treatment ON events (treatment_id) WHERE treatment_id IS NOT NULL;
"""


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)


def iso_utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    # The first-use contraindication check: every answer, with its time, kept with the history.
    conn.execute(
        """CREATE TABLE screenings (
            id      INTEGER PRIMARY KEY,
            ts      REAL NOT NULL,
            answers TEXT NOT NULL,
            passed  INTEGER NOT NULL CHECK (passed IN (0, 1))
        )"""
    )


#: Migration hook: ``MIGRATIONS[n]`` upgrades a database at version ``n - 1`` to ``n``. Each runs
#: inside the same transaction that then sets ``PRAGMA user_version = n``.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2}


TREATMENT_COLUMNS = (
    "id",
    "program_id",
    "program_name",
    "started_at",
    "ended_at",
    "end_reason",
    "active_s",
    "charge_uc",
    "net_dc_charge_uc",
    "mean_current_ua",
    "peak_current_ua",
    "contact_quality_pct",
    "fault_code",
    "updated_at",
)
ZONE_COLUMNS = (
    "zone",
    "active_s",
    "charge_uc",
    "mean_current_ua",
    "peak_current_ua",
    "contact_quality_pct",
)
EVENT_COLUMNS = ("id", "ts", "kind", "code", "message", "treatment_id")

# CSV layouts (documented on the export methods).
CSV_TREATMENT_HEADER = (*TREATMENT_COLUMNS[:4], "started_local", *TREATMENT_COLUMNS[4:])
CSV_ZONE_HEADER = ("treatment_id", *ZONE_COLUMNS)


def diagnose(conn: sqlite3.Connection) -> str | None:
    """Why this database is not a usable history (None if it is). May raise sqlite3 errors."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        return "quick_check: " + "; ".join(str(r[0]) for r in rows[:3])
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return f"schema version {version} is newer than this code knows ({SCHEMA_VERSION})"
    if version < 0:
        return f"invalid schema version {version}"
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if version == 0 and tables:
        return f"not a treatment history (unknown tables {sorted(tables)})"
    if version >= 1 and not _V1_TABLES <= tables:
        return f"schema version {version} lacks tables {sorted(_V1_TABLES - tables)}"
    return None
