"""The history store: opening (creating, migrating, setting a damaged file aside), explicit
transactions, and every write. Reads are in :mod:`hw.history.queries`."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hw.history import files
from hw.history.queries import HistoryQueries
from hw.history.records import (
    DAMAGED_EVENT_CODE,
    END_REASONS,
    EVENT_KIND_RE,
    HistoryError,
    TreatmentSummary,
    ZoneSummary,
    check_text,
    not_decreasing,
    row_id,
    validate_treatment_summary,
    validate_zones,
)
from hw.history.schema import MIGRATIONS, SCHEMA_VERSION, iso_utc


class History(HistoryQueries):
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
            damage = files.inspect_read_only(self.path)
            if damage is files.NEEDS_WRITE:
                # A hot journal or WAL index needs recovery first, which a read-only
                # connection cannot do; let SQLite recover it, then judge the result.
                conn = self._connect()
                damage = files.diagnose_or_raise(self.path, conn)
                if damage is not None:
                    # Closing may checkpoint its WAL into the file: the data stays in the set.
                    conn.close()
                    conn = None
            if damage is not None:
                assert isinstance(damage, str)
                self.set_aside = files.move_aside(self.path, self._now())
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

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        return sqlite3.connect(self.path, isolation_level=None, timeout=files.BUSY_TIMEOUT_S)

    def _configure(self, conn: sqlite3.Connection) -> None:
        created = not self.path.exists() or self.path.stat().st_size == 0
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"treatment history {self.path} cannot use WAL mode (got {mode})")
        # FULL: a commit is on disk before it returns; the Pi may lose power at any time.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        if created:
            files.fsync_dir(self.path.parent)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for target in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](conn)
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
        program_id = check_text("program_id", program_id, max_len=64)
        program_name = check_text("program_name", program_name)
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
            fault_code = check_text("fault_code", fault_code, max_len=64)
        self._store(treatment_id, summary, zones, end=(str.__str__(end_reason), fault_code))

    def _store(
        self,
        treatment_id: int,
        summary: TreatmentSummary,
        zones: Sequence[ZoneSummary],
        end: tuple[str, str | None] | None,
    ) -> None:
        tid = row_id("treatment_id", treatment_id)
        summary = validate_treatment_summary(summary)
        checked_zones = validate_zones(zones)
        now = self._now()
        with self._write() as conn:
            row = conn.execute(
                "SELECT ended_at, active_s, charge_uc FROM treatments WHERE id = ?", (tid,)
            ).fetchone()
            if row is None:
                raise ValueError(f"no treatment with id {tid}")
            if row[0] is not None:
                raise ValueError(f"treatment {tid} has already ended")
            not_decreasing(f"treatment {tid}", row[1], row[2], summary)
            stored = {
                zone: (active_s, charge_uc)
                for zone, active_s, charge_uc in conn.execute(
                    "SELECT zone, active_s, charge_uc FROM treatment_zones WHERE treatment_id = ?",
                    (tid,),
                )
            }
            for zone in checked_zones:
                if zone.zone in stored:
                    not_decreasing(f"treatment {tid} zone {zone.zone!r}", *stored[zone.zone], zone)
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
        if not isinstance(kind, str) or not EVENT_KIND_RE.fullmatch(kind):
            raise ValueError(f"kind must be a short lower-case word, got {kind!r}")
        code = check_text("code", code, max_len=64)
        if not isinstance(message, str):
            raise ValueError(f"message must be a str, got {type(message).__name__}")
        kind, message = str.__str__(kind), str.__str__(message)
        tid = None if treatment_id is None else row_id("treatment_id", treatment_id)
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
            if not isinstance(k, str) or not EVENT_KIND_RE.fullmatch(k) or not isinstance(v, bool):
                raise ValueError(f"answer {k!r} must be a short name with true or false")
        passed = not any(answers.values())
        now = self._now()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO screenings (ts, answers, passed) VALUES (?, ?, ?)",
                (now, json.dumps(answers, sort_keys=True), int(passed)),
            )
        return {"passed": passed, "t": iso_utc(now)}

    def last_screening(self) -> dict | None:
        """The latest contraindication check, or None when none is on record."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT ts, answers, passed FROM screenings ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return {"passed": bool(row[2]), "t": iso_utc(row[0]), "answers": json.loads(row[1])}

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
