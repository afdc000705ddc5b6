"""Durable treatment history: one SQLite file, written only by the hardware daemon.

What is stored (units are in the names; times are epoch seconds from the injected clock):

* ``treatments``: one row per treatment, with its running or final dose figures.
* ``treatment_zones``: per-zone figures of a treatment, one row per (treatment, zone).
* ``events``: faults, acknowledgements, POST results and other notes, optionally tied to a
  treatment.

Durability. The database runs in WAL mode with ``synchronous=FULL`` because the Pi may lose power
at any moment: every write method is a single transaction that is committed (and fsynced) before
it returns. During a treatment the daemon calls :meth:`History.checkpoint_treatment` every few
seconds, so a crash keeps the dose delivered so far; at the next start
:meth:`History.recover_interrupted` closes such treatments as ``'interrupted'``. Nothing is ever
deleted.

Damaged files. "Bad data on disk: never lose what was already recorded." :meth:`History.open`
inspects an existing file read-only first. If it is not a SQLite database, fails
``PRAGMA quick_check``, has a schema version newer than this code, or holds somebody else's tables,
the file and its ``-wal``/``-shm``/``-journal`` siblings are renamed (never deleted, never
overwriting anything) to ``<name>.damaged-<YYYYmmdd-HHMMSS>`` (local time from the clock; ``-2``,
``-3``... are appended on a clash), keeping the SQLite sibling suffixes so the set still opens as a
database. A fresh database is created and an event ``kind='fault', code='HISTORY_DAMAGED'`` names
the set-aside path; :attr:`History.set_aside` and :attr:`History.damage_reason` tell the caller.
A non-empty ``-wal`` or ``-journal`` left without its database (or next to a zero-length one) is
set aside the same way: SQLite would silently delete it, and it may hold committed data (e.g. after
a power cut in the middle of setting a damaged set aside).

A zero-length file is simply a new, empty database (SQLite treats it so): it is initialised in
place, not set aside.

Not damage: a missing directory, a path that is a directory, permission errors, a locked or
unreadable file. Those raise :class:`HistoryError` and no file is moved.

Threads: one :class:`History` object belongs to one thread (the daemon's history worker). The
SQLite connection keeps ``check_same_thread=True``, so use from another thread raises.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "END_REASONS",
    "SCHEMA_VERSION",
    "STREAK_MIN_ACTIVE_S",
    "EventRecord",
    "History",
    "HistoryError",
    "TreatmentRecord",
    "TreatmentSummary",
    "ZoneSummary",
]

SCHEMA_VERSION = 2

#: How a treatment may end. ``'interrupted'`` is what :meth:`History.recover_interrupted` writes.
END_REASONS = frozenset({"finished", "stopped", "fault", "estop", "interrupted"})

#: A day counts towards :meth:`History.streak_days` with a treatment of at least this many seconds.
STREAK_MIN_ACTIVE_S = 60.0

DAMAGED_EVENT_CODE = "HISTORY_DAMAGED"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIBLING_SUFFIXES = ("-wal", "-shm", "-journal")
# Primary SQLite result codes (extended codes carry them in the low byte).
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_BUSY_TIMEOUT_S = 5.0
_EVENT_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_LIMIT = 100_000
_MAX_ROW_ID = 2**63 - 1  # SQLite's rowid range

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


def _iso_utc(ts: float) -> str:
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


#: Migration hook: ``_MIGRATIONS[n]`` upgrades a database at version ``n - 1`` to ``n``. Each runs
#: inside the same transaction that then sets ``PRAGMA user_version = n``.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2}


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


def _text(name: str, value: object, *, max_len: int = 200) -> str:
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


def _row_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ROW_ID:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _limit(name: str, value: object) -> int:
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
        _validate_treatment_summary(self)


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


def _validate_treatment_summary(summary: object) -> TreatmentSummary:
    if not isinstance(summary, TreatmentSummary):
        raise ValueError(f"summary must be a TreatmentSummary, got {type(summary).__name__}")
    _set_floats(summary, ("active_s", "charge_uc", "mean_current_ua", "peak_current_ua"))
    _set_floats(summary, ("net_dc_charge_uc",), signed=True)
    _set_floats(summary, ("contact_quality_pct",), max_value=100.0)
    return summary


def _validate_zone_summary(zone: object) -> ZoneSummary:
    if not isinstance(zone, ZoneSummary):
        raise ValueError(f"zones must hold ZoneSummary items, got {type(zone).__name__}")
    object.__setattr__(zone, "zone", _text("zone", zone.zone, max_len=64))
    _set_floats(zone, ("active_s", "charge_uc", "mean_current_ua", "peak_current_ua"))
    _set_floats(zone, ("contact_quality_pct",), max_value=100.0)
    return zone


def _validate_zones(zones: object) -> list[ZoneSummary]:
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


_TREATMENT_COLUMNS = (
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
_ZONE_COLUMNS = (
    "zone",
    "active_s",
    "charge_uc",
    "mean_current_ua",
    "peak_current_ua",
    "contact_quality_pct",
)
_EVENT_COLUMNS = ("id", "ts", "kind", "code", "message", "treatment_id")

# CSV layouts (documented on the export methods).
CSV_TREATMENT_HEADER = (*_TREATMENT_COLUMNS[:4], "started_local", *_TREATMENT_COLUMNS[4:])
CSV_ZONE_HEADER = ("treatment_id", *_ZONE_COLUMNS)


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _fsync_dir(directory: Path) -> None:
    # Make renames and new files survive a power cut; not every filesystem can fsync a dir.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_no_clobber(src: Path, dst: Path) -> None:
    # os.rename would silently replace dst; a hard link fails instead if dst exists.
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:
        # No hard links here (e.g. FAT): the caller already chose a free name.
        if os.path.lexists(dst):
            raise FileExistsError(dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


class History:
    """The treatment history database at ``path``.

    Construction does no I/O; call :meth:`open` (or use ``with History(path) as h:``, which opens
    it) and :meth:`close`. ``clock`` returns epoch seconds and stamps every row.

    After :meth:`open`, :attr:`set_aside` lists the paths a damaged file set was moved to (empty
    if none) and :attr:`damage_reason` says why (None if nothing was damaged).

    Not thread-safe: use one object from a single thread (the daemon's history worker).
    Bad arguments raise ValueError before anything is written. SQLite errors at run time (disk
    full, I/O error) propagate as ``sqlite3.Error`` after the transaction was rolled back.
    """

    def __init__(self, path: os.PathLike[str] | str, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self.set_aside: list[Path] = []
        self.damage_reason: str | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating or migrating if needed) the database; set a damaged file aside.

        Raises :class:`HistoryError` if the file or its directory cannot be used.
        """
        if self._conn is not None:
            raise RuntimeError(f"history {self.path} is already open")
        self.set_aside = []
        self.damage_reason = None
        conn: sqlite3.Connection | None = None
        try:
            damage = self._inspect_read_only()
            if damage is _NEEDS_WRITE:
                # A hot journal or WAL index needs recovery first, which a read-only
                # connection cannot do; let SQLite recover it, then judge the result.
                conn = self._connect()
                damage = self._diagnose_or_raise(conn)
                if damage is not None:
                    # Closing may checkpoint its WAL into the file: the data stays in the set.
                    conn.close()
                    conn = None
            if damage is not None:
                assert isinstance(damage, str)
                self.set_aside = self._move_aside()
                self.damage_reason = damage
            if conn is None:
                conn = self._connect()
            self._configure(conn)
            self._migrate(conn)
            self._conn = conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise HistoryError(f"cannot open treatment history {self.path}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if self.damage_reason is not None:
            moved = ", ".join(str(p) for p in self.set_aside)
            self.record_event(
                "fault",
                DAMAGED_EVENT_CODE,
                f"history database was damaged ({self.damage_reason}); set aside as {moved}",
            )

    def close(self) -> None:
        """Close the database (idempotent). Everything was already committed."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> History:
        if self._conn is None:
            self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- opening helpers ------------------------------------------------------------------

    def _sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _inspect_read_only(self) -> str | object | None:
        """Judge an existing file without writing to it (so a set-aside file keeps its bytes).

        Returns None (usable or absent), a damage reason, or ``_NEEDS_WRITE``.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self.path.parent.is_dir():
                raise HistoryError(
                    f"directory for treatment history does not exist: {self.path.parent}"
                ) from None
            return self._orphan_journal("journal file without its database")
        except OSError as exc:
            raise HistoryError(f"cannot access treatment history {self.path}: {exc}") from exc
        if not os.path.isfile(self.path):
            raise HistoryError(f"treatment history path is not a regular file: {self.path}")
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise HistoryError(f"cannot read treatment history {self.path}: {exc}") from exc
        if st.st_size == 0:
            return self._orphan_journal("journal file next to an empty database")
        if head != _SQLITE_MAGIC:
            return "not a SQLite database"
        uri = self.path.absolute().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open treatment history {self.path}: {exc}") from exc
        try:
            return self._diagnose_or_raise(conn, read_only=True)
        finally:
            conn.close()

    def _orphan_journal(self, reason: str) -> str | None:
        for suffix in ("-wal", "-journal"):
            try:
                if self._sibling(suffix).stat().st_size > 0:
                    return reason
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise HistoryError(f"cannot access {self._sibling(suffix)}: {exc}") from exc
        return None

    def _diagnose_or_raise(
        self, conn: sqlite3.Connection, *, read_only: bool = False
    ) -> str | object | None:
        try:
            return _diagnose(conn)
        except sqlite3.DatabaseError as exc:
            code = _sqlite_code(exc)
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                return f"unreadable: {exc}"
            if read_only and code == _SQLITE_READONLY:
                return _NEEDS_WRITE
            raise HistoryError(
                f"cannot use treatment history {self.path}: {exc} (SQLite needs to read and write"
                " the file and create its -wal/-shm files in the same directory)"
            ) from exc

    def _move_aside(self) -> list[Path]:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._now()))
        base = f"{self.path.name}.damaged-{stamp}"
        members = ("", *_SIBLING_SUFFIXES)
        n = 1
        while True:
            name = base if n == 1 else f"{base}-{n}"
            if not any(os.path.lexists(self.path.with_name(name + s)) for s in members):
                break
            n += 1
        moved: list[Path] = []
        try:
            # Main file first: a crash before the siblings move leaves an orphan journal, which
            # the next open sets aside too (SQLite would delete it next to a new database).
            for suffix in members:
                src = self._sibling(suffix)
                if os.path.lexists(src):
                    dst = self.path.with_name(name + suffix)
                    _move_no_clobber(src, dst)
                    moved.append(dst)
        except OSError as exc:
            raise HistoryError(
                f"treatment history {self.path} is damaged but could not be set aside: {exc}"
            ) from exc
        finally:
            _fsync_dir(self.path.parent)
        return moved

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        return sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)

    def _configure(self, conn: sqlite3.Connection) -> None:
        created = not self.path.exists() or self.path.stat().st_size == 0
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"treatment history {self.path} cannot use WAL mode (got {mode})")
        # FULL: a commit is on disk before it returns; the Pi may lose power at any time.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        if created:
            _fsync_dir(self.path.parent)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target](conn)
                conn.execute(f"PRAGMA user_version = {int(target)}")

    # ---- transactions ---------------------------------------------------------------------

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"history {self.path} is not open")
        return self._conn

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so a write never fails half-way on BUSY.
        conn.execute(f"BEGIN {mode}")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._require()
        with self._transaction(conn):
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # One snapshot for reads that take several queries.
        conn = self._require()
        with self._transaction(conn, "DEFERRED"):
            yield conn

    def _now(self) -> float:
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise RuntimeError(f"history clock returned {now!r}, not finite epoch seconds")
        return float(now)

    # ---- writes ---------------------------------------------------------------------------

    def begin_treatment(self, program_id: str, program_name: str) -> int:
        """Record the start of a treatment (figures zero) and return its id."""
        program_id = _text("program_id", program_id, max_len=64)
        program_name = _text("program_name", program_name)
        now = self._now()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO treatments (program_id, program_name, started_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (program_id, program_name, now, now),
            )
            return int(cur.lastrowid)

    def checkpoint_treatment(
        self, treatment_id: int, summary: TreatmentSummary, zones: Sequence[ZoneSummary]
    ) -> None:
        """Store the figures so far of a running treatment, so a crash keeps the dose.

        Zones are upserted: a zone not named in this call keeps its last stored figures.
        ``active_s`` and ``charge_uc`` (treatment and per zone) may not decrease: a reset
        counter must not overwrite a recorded dose.
        """
        self._store(treatment_id, summary, zones, end=None)

    def finish_treatment(
        self,
        treatment_id: int,
        end_reason: str,
        summary: TreatmentSummary,
        zones: Sequence[ZoneSummary],
        fault_code: str | None = None,
    ) -> None:
        """Store the final figures and close the treatment (same rules as a checkpoint).

        ``end_reason`` is one of :data:`END_REASONS`; ``fault_code`` is optional text.
        """
        if not isinstance(end_reason, str) or end_reason not in END_REASONS:
            raise ValueError(f"end_reason must be one of {sorted(END_REASONS)}, got {end_reason!r}")
        if fault_code is not None:
            fault_code = _text("fault_code", fault_code, max_len=64)
        self._store(treatment_id, summary, zones, end=(str.__str__(end_reason), fault_code))

    def _store(
        self,
        treatment_id: int,
        summary: TreatmentSummary,
        zones: Sequence[ZoneSummary],
        end: tuple[str, str | None] | None,
    ) -> None:
        tid = _row_id("treatment_id", treatment_id)
        summary = _validate_treatment_summary(summary)
        checked_zones = _validate_zones(zones)
        now = self._now()
        with self._write() as conn:
            row = conn.execute(
                "SELECT ended_at, active_s, charge_uc FROM treatments WHERE id = ?", (tid,)
            ).fetchone()
            if row is None:
                raise ValueError(f"no treatment with id {tid}")
            if row[0] is not None:
                raise ValueError(f"treatment {tid} has already ended")
            _not_decreasing(f"treatment {tid}", row[1], row[2], summary)
            stored = {
                zone: (active_s, charge_uc)
                for zone, active_s, charge_uc in conn.execute(
                    "SELECT zone, active_s, charge_uc FROM treatment_zones WHERE treatment_id = ?",
                    (tid,),
                )
            }
            for zone in checked_zones:
                if zone.zone in stored:
                    _not_decreasing(f"treatment {tid} zone {zone.zone!r}", *stored[zone.zone], zone)
            ended_at, end_reason, fault_code = (None, None, None) if end is None else (now, *end)
            conn.execute(
                "UPDATE treatments SET active_s = ?, charge_uc = ?, net_dc_charge_uc = ?,"
                " mean_current_ua = ?, peak_current_ua = ?, contact_quality_pct = ?,"
                " ended_at = ?, end_reason = ?, fault_code = ?, updated_at = ? WHERE id = ?",
                (
                    summary.active_s,
                    summary.charge_uc,
                    summary.net_dc_charge_uc,
                    summary.mean_current_ua,
                    summary.peak_current_ua,
                    summary.contact_quality_pct,
                    ended_at,
                    end_reason,
                    fault_code,
                    now,
                    tid,
                ),
            )
            conn.executemany(
                "INSERT INTO treatment_zones (treatment_id, zone, active_s, charge_uc,"
                " mean_current_ua, peak_current_ua, contact_quality_pct)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (treatment_id, zone) DO UPDATE SET active_s = excluded.active_s,"
                " charge_uc = excluded.charge_uc, mean_current_ua = excluded.mean_current_ua,"
                " peak_current_ua = excluded.peak_current_ua,"
                " contact_quality_pct = excluded.contact_quality_pct",
                [
                    (
                        tid,
                        z.zone,
                        z.active_s,
                        z.charge_uc,
                        z.mean_current_ua,
                        z.peak_current_ua,
                        z.contact_quality_pct,
                    )
                    for z in checked_zones
                ],
            )

    def record_event(
        self, kind: str, code: str, message: str, treatment_id: int | None = None
    ) -> int:
        """Record an event and return its id.

        ``kind`` is a short lower-case word ('fault', 'acknowledge', 'post', 'info', ...);
        ``code`` a non-empty code such as 'OVERCURRENT'; ``message`` free text (may be empty).
        ``treatment_id``, if given, must name an existing treatment.
        """
        if not isinstance(kind, str) or not _EVENT_KIND_RE.fullmatch(kind):
            raise ValueError(f"kind must be a short lower-case word, got {kind!r}")
        code = _text("code", code, max_len=64)
        if not isinstance(message, str):
            raise ValueError(f"message must be a str, got {type(message).__name__}")
        kind, message = str.__str__(kind), str.__str__(message)
        tid = None if treatment_id is None else _row_id("treatment_id", treatment_id)
        now = self._now()
        with self._write() as conn:
            if (
                tid is not None
                and not conn.execute("SELECT 1 FROM treatments WHERE id = ?", (tid,)).fetchone()
            ):
                raise ValueError(f"no treatment with id {tid}")
            cur = conn.execute(
                "INSERT INTO events (ts, kind, code, message, treatment_id) VALUES (?, ?, ?, ?, ?)",
                (now, kind, code, message, tid),
            )
            return int(cur.lastrowid)

    def record_screening(self, answers: dict[str, bool]) -> dict:
        """Record a contraindication check: every answer true/false. Passed when none is true.
        Returns ``{"passed", "t"}`` (``t`` ISO-8601 UTC)."""
        if not isinstance(answers, dict) or not answers:
            raise ValueError("answers must be a non-empty mapping")
        for k, v in answers.items():
            if not isinstance(k, str) or not _EVENT_KIND_RE.fullmatch(k) or not isinstance(v, bool):
                raise ValueError(f"answer {k!r} must be a short name with true or false")
        passed = not any(answers.values())
        now = self._now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO screenings (ts, answers, passed) VALUES (?, ?, ?)",
                (now, json.dumps(answers, sort_keys=True), int(passed)),
            )
        return {"passed": passed, "t": _iso_utc(now)}

    def last_screening(self) -> dict | None:
        """The latest contraindication check, or None when none is on record."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT ts, answers, passed FROM screenings ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return {"passed": bool(row[2]), "t": _iso_utc(row[0]), "answers": json.loads(row[1])}

    def recover_interrupted(self) -> list[int]:
        """Close every unfinished treatment as 'interrupted', ended at its last checkpoint.

        Call once at daemon start, before any new treatment. Keeps all figures; returns the ids.
        """
        with self._write() as conn:
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM treatments WHERE ended_at IS NULL ORDER BY id"
                )
            ]
            conn.execute(
                "UPDATE treatments SET ended_at = updated_at, end_reason = 'interrupted'"
                " WHERE ended_at IS NULL"
            )
        return ids

    # ---- reads ----------------------------------------------------------------------------

    def recent(self, limit: int = 20) -> list[TreatmentRecord]:
        """The latest ``limit`` treatments, newest first (by id, so clock jumps do not reorder
        them), each with its zones."""
        _limit("limit", limit)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_TREATMENT_COLUMNS)} FROM treatments ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return self._with_zones(conn, rows)

    def treatment(self, treatment_id: int) -> TreatmentRecord | None:
        """One treatment with its zones, or None if there is no such id."""
        tid = _row_id("treatment_id", treatment_id)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_TREATMENT_COLUMNS)} FROM treatments WHERE id = ?", (tid,)
            ).fetchall()
            records = self._with_zones(conn, rows)
        return records[0] if records else None

    @staticmethod
    def _with_zones(conn: sqlite3.Connection, rows: list[tuple]) -> list[TreatmentRecord]:
        if not rows:
            return []
        ids = [row[0] for row in rows]
        zones: dict[int, list[ZoneSummary]] = {tid: [] for tid in ids}
        marks = ", ".join("?" * len(ids))
        for tid, *values in conn.execute(
            f"SELECT treatment_id, {', '.join(_ZONE_COLUMNS)} FROM treatment_zones"
            f" WHERE treatment_id IN ({marks}) ORDER BY treatment_id, zone",
            ids,
        ):
            zones[tid].append(ZoneSummary(*values))
        return [TreatmentRecord(*row, zones=tuple(zones[row[0]])) for row in rows]

    def events(self, limit: int = 100, since_id: int | None = None) -> list[EventRecord]:
        """Events in ascending id order: the newest ``limit`` of them, or, with ``since_id``,
        the first ``limit`` with an id greater than ``since_id`` (for polling)."""
        _limit("limit", limit)
        conn = self._require()
        cols = ", ".join(_EVENT_COLUMNS)
        if since_id is None:
            rows = conn.execute(
                f"SELECT {cols} FROM (SELECT {cols} FROM events ORDER BY id DESC LIMIT ?)"
                " ORDER BY id",
                (limit,),
            ).fetchall()
        else:
            if (
                isinstance(since_id, bool)
                or not isinstance(since_id, int)
                or not 0 <= since_id <= _MAX_ROW_ID
            ):
                raise ValueError(f"since_id must be a non-negative int or None, got {since_id!r}")
            rows = conn.execute(
                f"SELECT {cols} FROM events WHERE id > ? ORDER BY id LIMIT ?", (since_id, limit)
            ).fetchall()
        return [EventRecord(*row) for row in rows]

    def totals(self) -> dict[str, Any]:
        """All-time totals over every recorded treatment (finished or not).

        Returns ``{'count': int, 'active_s': float, 'charge_uc': float,
        'zone_active_s': {zone: float}}``.
        """
        with self._read() as conn:
            count, active_s, charge_uc = conn.execute(
                "SELECT COUNT(*), TOTAL(active_s), TOTAL(charge_uc) FROM treatments"
            ).fetchone()
            zone_active_s = dict(
                conn.execute(
                    "SELECT zone, TOTAL(active_s) FROM treatment_zones GROUP BY zone ORDER BY zone"
                ).fetchall()
            )
        return {
            "count": int(count),
            "active_s": float(active_s),
            "charge_uc": float(charge_uc),
            "zone_active_s": zone_active_s,
        }

    def _treatment_days(self, min_active_s: float) -> dict[_dt.date, float]:
        # Local calendar day of each treatment's start -> summed active_s.
        days: dict[_dt.date, float] = {}
        for started_at, active_s in self._require().execute(
            "SELECT started_at, active_s FROM treatments WHERE active_s >= ?", (min_active_s,)
        ):
            started = _local_datetime(started_at)
            if started is None:
                continue  # a clock far out of range; it cannot belong to a real day
            day = started.date()
            days[day] = days.get(day, 0.0) + active_s
        return days

    def streak_days(self, today: _dt.date) -> int:
        """Consecutive local calendar days, ending today or yesterday, each with at least one
        treatment of ``active_s >= 60`` (counted on the day it started). 0 if none."""
        _plain_date("today", today)
        days = self._treatment_days(STREAK_MIN_ACTIVE_S)
        one = _dt.timedelta(days=1)
        day = today if today in days else today - one
        streak = 0
        while day in days:
            streak += 1
            day -= one
        return streak

    def active_s_on(self, day: _dt.date) -> float:
        """Total ``active_s`` of treatments that started on this local calendar day (for the
        daily output limit across restarts)."""
        _plain_date("day", day)
        return self._treatment_days(0.0).get(day, 0.0)

    def export_csv(self, fileobj: IO[str]) -> int:
        """Write one CSV row per treatment (oldest first) with a header; return the row count.

        Columns: :data:`CSV_TREATMENT_HEADER` (the stored columns plus ``started_local``, ISO
        8601 local time for people). Numbers are written with ``repr`` so they parse back
        exactly; None is an empty field. Open ``fileobj`` with ``newline=''``. Per-zone figures
        are in :meth:`export_zones_csv`.
        """
        writer = csv.writer(fileobj)
        writer.writerow(CSV_TREATMENT_HEADER)
        count = 0
        with self._read() as conn:
            for row in conn.execute(
                f"SELECT {', '.join(_TREATMENT_COLUMNS)} FROM treatments ORDER BY id"
            ):
                started = _local_datetime(row[3])
                local = "" if started is None else started.isoformat(timespec="seconds")
                writer.writerow(["" if v is None else v for v in (*row[:4], local, *row[4:])])
                count += 1
        return count

    def export_zones_csv(self, fileobj: IO[str]) -> int:
        """Write one CSV row per (treatment, zone), ordered by treatment id then zone, with a
        header (:data:`CSV_ZONE_HEADER`); return the row count. Same conventions as
        :meth:`export_csv`."""
        writer = csv.writer(fileobj)
        writer.writerow(CSV_ZONE_HEADER)
        count = 0
        with self._read() as conn:
            for row in conn.execute(
                f"SELECT treatment_id, {', '.join(_ZONE_COLUMNS)} FROM treatment_zones"
                " ORDER BY treatment_id, zone"
            ):
                writer.writerow(row)
                count += 1
        return count


_NEEDS_WRITE = object()


def _diagnose(conn: sqlite3.Connection) -> str | None:
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


def _not_decreasing(what: str, active_s: float, charge_uc: float, new: Any) -> None:
    if new.active_s < active_s or new.charge_uc < charge_uc:
        raise ValueError(
            f"{what}: active_s/charge_uc may not decrease (stored {active_s!r}/{charge_uc!r},"
            f" got {new.active_s!r}/{new.charge_uc!r})"
        )


def _local_datetime(epoch_s: float) -> _dt.datetime | None:
    """Aware local time of an epoch, or None if the platform cannot represent it."""
    try:
        return _dt.datetime.fromtimestamp(epoch_s).astimezone()
    except (OverflowError, OSError, ValueError):
        return None


def _plain_date(name: str, value: object) -> None:
    # A datetime is a date subclass; refuse it rather than guess which day it means.
    if not isinstance(value, _dt.date) or isinstance(value, _dt.datetime):
        raise ValueError(f"{name} must be a datetime.date, got {type(value).__name__}")
