"""Reads and exports of the history (a part of :class:`hw.history.History`; every read is one
snapshot)."""

from __future__ import annotations

import csv
import datetime as _dt
import sqlite3
from typing import IO, Any

from hw.history.records import (
    MAX_ROW_ID,
    STREAK_MIN_ACTIVE_S,
    EventRecord,
    TreatmentRecord,
    ZoneSummary,
    check_limit,
    row_id,
)
from hw.history.schema import (
    CSV_TREATMENT_HEADER,
    CSV_ZONE_HEADER,
    EVENT_COLUMNS,
    TREATMENT_COLUMNS,
    ZONE_COLUMNS,
)


class HistoryQueries:
    """The read side of :class:`hw.history.History`, which supplies ``_read()`` (a snapshot
    transaction) and ``_require()`` (the open connection)."""

    def recent(self, limit: int = 20) -> list[TreatmentRecord]:
        """The latest ``limit`` treatments, newest first (by id, so clock jumps do not reorder
        them), each with its zones."""
        check_limit("limit", limit)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(TREATMENT_COLUMNS)} FROM treatments ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return self._with_zones(conn, rows)

    def treatment(self, treatment_id: int) -> TreatmentRecord | None:
        """One treatment with its zones, or None if there is no such id."""
        tid = row_id("treatment_id", treatment_id)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(TREATMENT_COLUMNS)} FROM treatments WHERE id = ?", (tid,)
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
            f"SELECT treatment_id, {', '.join(ZONE_COLUMNS)} FROM treatment_zones"
            f" WHERE treatment_id IN ({marks}) ORDER BY treatment_id, zone",
            ids,
        ):
            zones[tid].append(ZoneSummary(*values))
        return [TreatmentRecord(*row, zones=tuple(zones[row[0]])) for row in rows]

    def events(self, limit: int = 100, since_id: int | None = None) -> list[EventRecord]:
        """Events in ascending id order: the newest ``limit`` of them, or, with ``since_id``,
        the first ``limit`` with an id greater than ``since_id`` (for polling)."""
        check_limit("limit", limit)
        conn = self._require()
        cols = ", ".join(EVENT_COLUMNS)
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
                or not 0 <= since_id <= MAX_ROW_ID
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
            started = local_datetime(started_at)
            if started is None:
                continue  # a clock far out of range; it cannot belong to a real day
            day = started.date()
            days[day] = days.get(day, 0.0) + active_s
        return days

    def streak_days(self, today: _dt.date) -> int:
        """Consecutive local calendar days, ending today or yesterday, each with at least one
        treatment of ``active_s >= 60`` (counted on the day it started). 0 if none."""
        plain_date("today", today)
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
        plain_date("day", day)
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
                f"SELECT {', '.join(TREATMENT_COLUMNS)} FROM treatments ORDER BY id"
            ):
                started = local_datetime(row[3])
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
                f"SELECT treatment_id, {', '.join(ZONE_COLUMNS)} FROM treatment_zones"
                " ORDER BY treatment_id, zone"
            ):
                writer.writerow(row)
                count += 1
        return count


def local_datetime(epoch_s: float) -> _dt.datetime | None:
    """Aware local time of an epoch, or None if the platform cannot represent it."""
    try:
        return _dt.datetime.fromtimestamp(epoch_s).astimezone()
    except (OverflowError, OSError, ValueError):
        return None


def plain_date(name: str, value: object) -> None:
    # A datetime is a date subclass; refuse it rather than guess which day it means.
    if not isinstance(value, _dt.date) or isinstance(value, _dt.datetime):
        raise ValueError(f"{name} must be a datetime.date, got {type(value).__name__}")
