"""Treatment history: round trips, validation, damaged files and real SIGKILL crashes.

Every test uses its own tmp_path and a fake clock. Times are built from local wall-clock dates at
midday, so the calendar-day logic holds in any time zone the suite runs in.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import io
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.history import (
    CSV_TREATMENT_HEADER,
    CSV_ZONE_HEADER,
    SCHEMA_VERSION,
    EventRecord,
    History,
    HistoryError,
    TreatmentRecord,
    TreatmentSummary,
    ZoneSummary,
)

ROOT = Path(__file__).resolve().parents[1]
WRITER = ROOT / "tests" / "helpers" / "history_writer.py"


def local_ts(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> float:
    """Epoch seconds of a local wall-clock time."""
    return dt.datetime(year, month, day, hour, minute).timestamp()


T0 = local_ts(2024, 6, 3, 9)


class FakeClock:
    def __init__(self, t: float = T0):
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt_s: float) -> None:
        self.t += dt_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "history.db"


@pytest.fixture
def hist(db_path: Path, clock: FakeClock):
    with History(db_path, clock=clock) as h:
        yield h


def summary(**changes: float) -> TreatmentSummary:
    values = dict(
        active_s=120.5,
        charge_uc=3000.25,
        net_dc_charge_uc=-0.75,
        mean_current_ua=180.0,
        peak_current_ua=260.0,
        contact_quality_pct=92.5,
    )
    values.update(changes)
    return TreatmentSummary(**values)


def zone(name: str, **changes: float) -> ZoneSummary:
    values = dict(
        active_s=60.0,
        charge_uc=1500.0,
        mean_current_ua=175.0,
        peak_current_ua=250.0,
        contact_quality_pct=90.0,
    )
    values.update(changes)
    return ZoneSummary(zone=name, **values)


def snapshot(path: Path) -> dict:
    """Everything stored, read through an independent connection."""
    with sqlite3.connect(path) as conn:
        out = {"user_version": conn.execute("PRAGMA user_version").fetchone()[0]}
        for table in ("treatments", "treatment_zones", "events"):
            out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    conn.close()
    return out


def set_aside_name(path: Path, t: float = T0) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(t))
    return path.with_name(f"{path.name}.damaged-{stamp}")


def make_real_db(path: Path, treatments: int = 60) -> None:
    clock = FakeClock()
    with History(path, clock=clock) as h:
        for i in range(treatments):
            tid = h.begin_treatment("quick-tone", f"Quick tone {i}")
            clock.advance(300)
            zones = [zone(z, charge_uc=i + 1.0) for z in ("cheeks", "forehead", "jawline")]
            h.finish_treatment(tid, "finished", summary(charge_uc=3.0 * (i + 1)), zones)
            h.record_event("info", "NOTE", "x" * 200, treatment_id=tid)
    assert not Path(f"{path}-wal").exists()  # the last close checkpointed everything


# --------------------------------------------------------------------------------------------
# Opening, pragmas, round trip
# --------------------------------------------------------------------------------------------


def test_construction_does_no_io_and_use_before_open_is_refused(db_path: Path) -> None:
    h = History(db_path)
    assert not db_path.exists()
    with pytest.raises(RuntimeError, match="not open"):
        h.begin_treatment("demo", "Demo")
    h.open()
    with pytest.raises(RuntimeError, match="already open"):
        h.open()
    h.close()
    h.close()  # idempotent


def test_new_database_is_wal_full_sync_with_foreign_keys(hist: History, db_path: Path) -> None:
    conn = hist._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert snapshot(db_path)["user_version"] == SCHEMA_VERSION == 2
    assert hist.set_aside == [] and hist.damage_reason is None


def test_every_write_is_committed_before_it_returns(hist: History, db_path: Path) -> None:
    # An independent connection sees each write while the History is still open.
    tid = hist.begin_treatment("demo", "Demo")
    assert len(snapshot(db_path)["treatments"]) == 1
    hist.checkpoint_treatment(tid, summary(), [zone("cheeks")])
    assert snapshot(db_path)["treatment_zones"][0][:2] == (tid, "cheeks")
    hist.finish_treatment(tid, "stopped", summary(), [zone("cheeks")])
    assert snapshot(db_path)["treatments"][0][5] == "stopped"
    hist.record_event("info", "HELLO", "hi")
    assert len(snapshot(db_path)["events"]) == 1


def test_round_trip(hist: History, clock: FakeClock) -> None:
    t1 = hist.begin_treatment("full-face-lift", "Full-face lift")
    clock.advance(5)
    hist.checkpoint_treatment(t1, summary(active_s=5.0, charge_uc=100.0), [zone("forehead")])
    clock.advance(595)
    final_zones = [zone("forehead", active_s=300.0), zone("brows", active_s=240.5, charge_uc=7.0)]
    hist.finish_treatment(t1, "finished", summary(active_s=540.5), final_zones)
    e1 = hist.record_event("acknowledge", "NOTE", "user said hi", treatment_id=t1)

    clock.t = local_ts(2024, 6, 4, 19, 30)
    t2 = hist.begin_treatment("quick-tone", "Quick tone")
    clock.advance(30)
    hist.finish_treatment(
        t2, "fault", summary(active_s=30.0, charge_uc=0.1), [], fault_code="OVERCURRENT"
    )
    e2 = hist.record_event("fault", "OVERCURRENT", "tripped", treatment_id=t2)
    e3 = hist.record_event("post", "POST_OK", "")

    rec1 = hist.treatment(t1)
    assert rec1 == TreatmentRecord(
        id=t1,
        program_id="full-face-lift",
        program_name="Full-face lift",
        started_at=T0,
        ended_at=T0 + 600,
        end_reason="finished",
        active_s=540.5,
        charge_uc=3000.25,
        net_dc_charge_uc=-0.75,
        mean_current_ua=180.0,
        peak_current_ua=260.0,
        contact_quality_pct=92.5,
        fault_code=None,
        updated_at=T0 + 600,
        zones=(final_zones[1], final_zones[0]),  # sorted by zone name
    )
    rec2 = hist.treatment(t2)
    assert rec2 is not None
    assert (rec2.end_reason, rec2.fault_code, rec2.zones) == ("fault", "OVERCURRENT", ())
    assert hist.treatment(999) is None
    assert hist.recent() == [rec2, rec1]
    assert hist.recent(limit=1) == [rec2]

    events = hist.events()
    assert [e.id for e in events] == [e1, e2, e3]
    assert events[1] == EventRecord(e2, clock.t, "fault", "OVERCURRENT", "tripped", t2)
    assert events[2].treatment_id is None and events[2].message == ""

    assert hist.totals() == {
        "count": 2,
        "active_s": 570.5,
        "charge_uc": 3000.35,
        "zone_active_s": {"brows": 240.5, "forehead": 300.0},
    }
    assert hist.streak_days(dt.date(2024, 6, 4)) == 1  # t2 (30 s) is too short to count
    assert hist.streak_days(dt.date(2024, 6, 3)) == 1
    assert hist.active_s_on(dt.date(2024, 6, 4)) == 30.0

    out = io.StringIO(newline="")
    assert hist.export_csv(out) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert tuple(rows[0]) == CSV_TREATMENT_HEADER
    for row, rec in zip(rows, (rec1, rec2), strict=True):
        for name in CSV_TREATMENT_HEADER:
            if name == "started_local":
                local = dt.datetime.fromisoformat(row[name])
                assert local.timestamp() == rec.started_at
                assert local.replace(tzinfo=None) == dt.datetime.fromtimestamp(rec.started_at)
                continue
            value = getattr(rec, name)
            if value is None:
                assert row[name] == ""
            elif isinstance(value, str):
                assert row[name] == value
            else:
                assert float(row[name]) == value, name

    out = io.StringIO(newline="")
    assert hist.export_zones_csv(out) == 2
    zone_rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert tuple(zone_rows[0]) == CSV_ZONE_HEADER
    parsed = [(int(r[0]), ZoneSummary(r[1], *map(float, r[2:]))) for r in zone_rows[1:]]
    assert parsed == [(t1, z) for z in rec1.zones]


def test_checkpoint_upserts_zones_and_keeps_zones_not_named(hist: History) -> None:
    tid = hist.begin_treatment("demo", "Demo")
    rec = hist.treatment(tid)
    assert rec is not None and rec.active_s == 0.0 and rec.contact_quality_pct is None
    hist.checkpoint_treatment(tid, summary(active_s=10.0), [zone("cheeks", active_s=10.0)])
    hist.checkpoint_treatment(tid, summary(active_s=20.0), [zone("forehead", active_s=10.0)])
    hist.checkpoint_treatment(tid, summary(active_s=30.0), [zone("forehead", active_s=20.0)])
    rec = hist.treatment(tid)
    assert rec is not None
    assert [(z.zone, z.active_s) for z in rec.zones] == [("cheeks", 10.0), ("forehead", 20.0)]
    assert rec.active_s == 30.0 and rec.ended_at is None


def test_recover_interrupted_keeps_checkpointed_figures(
    db_path: Path, clock: FakeClock, tmp_path: Path
) -> None:
    with History(db_path, clock=clock) as h:
        done = h.begin_treatment("demo", "Demo")
        h.finish_treatment(done, "finished", summary(), [zone("cheeks")])
        running = h.begin_treatment("demo", "Demo")
        clock.advance(12)
        h.checkpoint_treatment(running, summary(charge_uc=42.5), [zone("cheeks", charge_uc=40.0)])
        checkpoint_time = clock.t
        never_checkpointed = h.begin_treatment("quick-tone", "Quick tone")
        begun_at = clock.t
    # The daemon "crashed"; at the next start:
    clock.advance(3600)
    with History(db_path, clock=clock) as h:
        before = h.treatment(running)
        assert h.recover_interrupted() == [running, never_checkpointed]
        assert h.recover_interrupted() == []
        rec = h.treatment(running)
        assert rec is not None and before is not None
        assert (rec.end_reason, rec.ended_at, rec.updated_at) == (
            "interrupted",
            checkpoint_time,
            checkpoint_time,
        )
        assert rec.charge_uc == 42.5 and rec.zones == before.zones
        other = h.treatment(never_checkpointed)
        assert other is not None
        assert (other.end_reason, other.ended_at, other.active_s) == ("interrupted", begun_at, 0)
        assert h.treatment(done).end_reason == "finished"
        assert h.totals()["count"] == 3


def test_events_polling_with_since_id_and_limit(hist: History) -> None:
    ids = [hist.record_event("info", f"E{i}", str(i)) for i in range(10)]
    assert [e.id for e in hist.events(limit=3)] == ids[-3:]
    assert [e.id for e in hist.events(limit=4, since_id=ids[2])] == ids[3:7]
    assert hist.events(since_id=ids[-1]) == []
    assert [e.id for e in hist.events(since_id=0)] == ids


def test_streak_days(hist: History, clock: FakeClock) -> None:
    def treat(day: dt.date, active_s: float, hour: int = 12) -> None:
        clock.t = local_ts(day.year, day.month, day.day, hour)
        tid = hist.begin_treatment("demo", "Demo")
        hist.finish_treatment(tid, "finished", summary(active_s=active_s), [])

    d = dt.date(2024, 6, 10)
    assert hist.streak_days(d) == 0
    for back in (1, 2, 3):  # yesterday and the two days before
        treat(d - dt.timedelta(days=back), 60.0)
    treat(d - dt.timedelta(days=4), 59.9)  # too short: the streak stops here
    treat(d - dt.timedelta(days=5), 600.0)
    assert hist.streak_days(d) == 3  # ends yesterday
    assert hist.streak_days(d + dt.timedelta(days=1)) == 0  # a day missed
    treat(d, 30.0, hour=8)
    treat(d, 45.0, hour=23)  # two short ones do not add up to a qualifying treatment
    assert hist.streak_days(d) == 3
    assert hist.active_s_on(d) == 75.0
    treat(d, 61.0, hour=20)
    assert hist.streak_days(d) == 4
    assert hist.streak_days(d - dt.timedelta(days=5)) == 1


@pytest.fixture
def tz_utc_plus_10():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XXX-10"  # POSIX: ten hours east of UTC, no tzdata needed
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_streak_uses_local_calendar_days(tmp_path: Path, tz_utc_plus_10: None) -> None:
    utc_evening = dt.datetime(2024, 6, 3, 20, 0, tzinfo=dt.UTC).timestamp()  # 06:00 on the 4th
    with History(tmp_path / "h.db", clock=lambda: utc_evening) as h:
        tid = h.begin_treatment("demo", "Demo")
        h.finish_treatment(tid, "finished", summary(), [])
        assert h.streak_days(dt.date(2024, 6, 4)) == 1
        assert h.streak_days(dt.date(2024, 6, 3)) == 0  # the 4th is in its future
        out = io.StringIO(newline="")
        h.export_csv(out)
        assert "2024-06-04T06:00:00+10:00" in out.getvalue()


def test_str_subclasses_are_stored_as_plain_text(hist: History) -> None:
    from enum import StrEnum

    class Code(StrEnum):
        OVERCURRENT = "OVERCURRENT"

    tid = hist.begin_treatment("demo", "Demo")
    hist.finish_treatment(tid, "fault", summary(), [], fault_code=Code.OVERCURRENT)
    hist.record_event("fault", Code.OVERCURRENT, "x", treatment_id=tid)
    assert type(hist.treatment(tid).fault_code) is str
    assert hist.events()[0].code == "OVERCURRENT"


_finite = st.floats(min_value=0.0, max_value=1e15, allow_nan=False, allow_infinity=False)
_pct = st.floats(min_value=0.0, max_value=100.0)


@settings(max_examples=30, deadline=None)
@given(
    figures=st.tuples(_finite, _finite, st.floats(-1e9, 1e9), _finite, _finite, _pct),
    zone_figures=st.tuples(_finite, _finite, _finite, _finite, _pct),
)
def test_any_valid_figures_round_trip_exactly(figures: tuple, zone_figures: tuple) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with History(Path(tmp) / "h.db", clock=FakeClock()) as h:
            s = TreatmentSummary(*figures)
            z = ZoneSummary("cheeks", *zone_figures)
            tid = h.begin_treatment("demo", "Demo")
            h.finish_treatment(tid, "finished", s, [z])
            rec = h.treatment(tid)
            assert rec is not None
            assert rec.zones == (z,)
            stored = (rec.active_s, rec.charge_uc, rec.net_dc_charge_uc)
            assert stored == (s.active_s, s.charge_uc, s.net_dc_charge_uc)
            out = io.StringIO(newline="")
            h.export_csv(out)
            row = next(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
            assert float(row["charge_uc"]) == s.charge_uc
            assert float(row["peak_current_ua"]) == s.peak_current_ua


# --------------------------------------------------------------------------------------------
# Validation: bad input raises ValueError and changes nothing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"active_s": -1.0},
        {"charge_uc": float("nan")},
        {"peak_current_ua": float("inf")},
        {"net_dc_charge_uc": float("-inf")},
        {"mean_current_ua": True},
        {"active_s": "12"},
        {"contact_quality_pct": 100.5},
        {"contact_quality_pct": -0.1},
        {"charge_uc": 10**400},
    ],
)
def test_bad_summary_figures_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        summary(**kwargs)
    zone_kwargs = {k: v for k, v in kwargs.items() if k != "net_dc_charge_uc"}
    if zone_kwargs:
        with pytest.raises(ValueError):
            zone("cheeks", **zone_kwargs)


@pytest.mark.parametrize("name", ["", "  ", 5, None, "a\nb", "x" * 65])
def test_bad_zone_names_are_refused(name: object) -> None:
    with pytest.raises(ValueError, match="zone"):
        zone(name)  # type: ignore[arg-type]


def test_summaries_normalise_numbers_and_allow_negative_net_charge() -> None:
    s = summary(active_s=12, net_dc_charge_uc=-3)
    assert type(s.active_s) is float and s.net_dc_charge_uc == -3.0


def _forged_summary() -> TreatmentSummary:
    s = summary(active_s=500.0, charge_uc=5000.0)
    object.__setattr__(s, "charge_uc", float("nan"))  # bypasses __post_init__
    return s


BAD_WRITES = {
    "program_id not str": lambda h, ids: h.begin_treatment(7, "Demo"),
    "empty program_name": lambda h, ids: h.begin_treatment("demo", " "),
    "program_id with newline": lambda h, ids: h.begin_treatment("de\nmo", "Demo"),
    "unknown treatment": lambda h, ids: h.checkpoint_treatment(999, summary(), []),
    "bool treatment id": lambda h, ids: h.checkpoint_treatment(True, summary(), []),
    "str treatment id": lambda h, ids: h.checkpoint_treatment(str(ids["run"]), summary(), []),
    "already finished": lambda h, ids: h.checkpoint_treatment(ids["done"], summary(), []),
    "finish twice": lambda h, ids: h.finish_treatment(ids["done"], "finished", summary(), []),
    "summary is a dict": lambda h, ids: h.checkpoint_treatment(ids["run"], {"active_s": 1}, []),
    "forged NaN summary": lambda h, ids: h.checkpoint_treatment(ids["run"], _forged_summary(), []),
    "zones is a str": lambda h, ids: h.checkpoint_treatment(ids["run"], summary(), "cheeks"),
    "zone is a dict": lambda h, ids: h.checkpoint_treatment(ids["run"], summary(), [{}]),
    "duplicate zones": lambda h, ids: h.checkpoint_treatment(
        ids["run"], summary(), [zone("jawline"), zone("jawline")]
    ),
    "charge decreases": lambda h, ids: h.checkpoint_treatment(
        ids["run"], summary(charge_uc=10.0), []
    ),
    "zone active_s decreases (with a good zone)": lambda h, ids: h.checkpoint_treatment(
        ids["run"], summary(), [zone("jawline"), zone("cheeks", active_s=1.0)]
    ),
    "unknown end_reason": lambda h, ids: h.finish_treatment(ids["run"], "exploded", summary(), []),
    "end_reason None": lambda h, ids: h.finish_treatment(ids["run"], None, summary(), []),
    "fault_code not str": lambda h, ids: h.finish_treatment(
        ids["run"], "fault", summary(), [], fault_code=7
    ),
    "event kind capitalised": lambda h, ids: h.record_event("Fault", "X", "m"),
    "event code empty": lambda h, ids: h.record_event("fault", "", "m"),
    "event message None": lambda h, ids: h.record_event("fault", "X", None),
    "event for unknown treatment": lambda h, ids: h.record_event("info", "X", "m", 999),
}


@pytest.mark.parametrize("call", BAD_WRITES.values(), ids=BAD_WRITES.keys())
def test_bad_writes_raise_value_error_and_change_nothing(
    db_path: Path, clock: FakeClock, call
) -> None:
    with History(db_path, clock=clock) as h:
        done = h.begin_treatment("demo", "Demo")
        h.finish_treatment(done, "finished", summary(), [zone("cheeks")])
        run = h.begin_treatment("demo", "Demo")
        h.checkpoint_treatment(run, summary(), [zone("cheeks", active_s=30.0)])
        h.record_event("info", "START", "started")
        clock.advance(10)
        before = snapshot(db_path)
        with pytest.raises(ValueError):
            call(h, {"done": done, "run": run})
        assert snapshot(db_path) == before
        # The History is still usable afterwards.
        h.checkpoint_treatment(run, summary(active_s=200.0), [])


@pytest.mark.parametrize(
    "call",
    [
        lambda h: h.recent(0),
        lambda h: h.recent(1.5),
        lambda h: h.events(limit=-1),
        lambda h: h.events(since_id=-1),
        lambda h: h.events(since_id="3"),
        lambda h: h.treatment(0),
        lambda h: h.treatment(2**63),
        lambda h: h.events(since_id=2**64),
        lambda h: h.streak_days(dt.datetime(2024, 6, 3, 12)),
        lambda h: h.streak_days("2024-06-03"),
        lambda h: h.active_s_on(None),
    ],
)
def test_bad_read_arguments_raise_value_error(hist: History, call) -> None:
    with pytest.raises(ValueError):
        call(hist)


# --------------------------------------------------------------------------------------------
# Damaged files: set aside with their bytes, start fresh, record HISTORY_DAMAGED
# --------------------------------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(8192))


def _magic_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(2).randbytes(8000))


def _truncated(path: Path) -> None:
    make_real_db(path)
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    path.write_bytes(data[: len(data) // 2])


def _truncated_to_header(path: Path) -> None:
    make_real_db(path, treatments=3)
    path.write_bytes(path.read_bytes()[:100])


def _newer_schema(path: Path) -> None:
    make_real_db(path, treatments=3)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()


def _foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('not ours')")
    conn.commit()
    conn.close()


def _missing_tables(path: Path) -> None:
    make_real_db(path, treatments=1)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE events")
    conn.commit()
    conn.close()


DAMAGE = {
    "random bytes": (_garbage, "not a SQLite database"),
    "magic then garbage": (_magic_then_garbage, "unreadable"),
    "truncated to half": (_truncated, "unreadable"),
    "truncated to header": (_truncated_to_header, "unreadable"),
    "newer schema": (_newer_schema, "newer than this code"),
    "another app's database": (_foreign_database, "unknown tables"),
    "missing tables": (_missing_tables, "lacks tables"),
}


@pytest.mark.parametrize("make, reason", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_file_is_set_aside_and_a_fresh_database_starts(
    db_path: Path, clock: FakeClock, make, reason: str
) -> None:
    make(db_path)
    original = db_path.read_bytes()
    expected = set_aside_name(db_path)
    with History(db_path, clock=clock) as h:
        assert h.set_aside[0] == expected
        assert all(p.name.startswith(expected.name) for p in h.set_aside)
        assert reason in (h.damage_reason or "")
        assert expected.read_bytes() == original  # moved untouched
        # Fresh and working:
        assert h.recent() == [] and h.totals()["count"] == 0
        tid = h.begin_treatment("demo", "Demo")
        h.finish_treatment(tid, "finished", summary(), [zone("cheeks")])
        [event] = h.events()
        assert (event.kind, event.code) == ("fault", "HISTORY_DAMAGED")
        assert str(expected) in event.message and reason in event.message
    # Reopening the fresh database is uneventful.
    with History(db_path, clock=clock) as h:
        assert h.set_aside == [] and h.damage_reason is None
        assert len(h.events()) == 1 and h.totals()["count"] == 1


def test_zero_length_file_is_a_new_database(db_path: Path, clock: FakeClock) -> None:
    db_path.write_bytes(b"")
    with History(db_path, clock=clock) as h:
        assert h.set_aside == [] and h.events() == []
        h.begin_treatment("demo", "Demo")
    assert snapshot(db_path)["user_version"] == SCHEMA_VERSION
    assert list(db_path.parent.iterdir()) == [db_path]


def test_database_left_between_wal_switch_and_schema_is_completed(
    db_path: Path, clock: FakeClock
) -> None:
    # What a kill during the very first open can leave: WAL mode set, no tables, version 0.
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    with History(db_path, clock=clock) as h:
        assert h.set_aside == []
        h.begin_treatment("demo", "Demo")
    assert snapshot(db_path)["user_version"] == SCHEMA_VERSION


def test_set_aside_never_overwrites_an_earlier_one(db_path: Path, clock: FakeClock) -> None:
    taken = set_aside_name(db_path)
    taken.write_bytes(b"earlier")
    Path(f"{set_aside_name(db_path)}-2-wal").write_bytes(b"earlier wal")
    _garbage(db_path)
    with History(db_path, clock=clock) as h:
        assert h.set_aside == [Path(f"{taken}-3")]
    assert taken.read_bytes() == b"earlier"
    assert Path(f"{taken}-2-wal").read_bytes() == b"earlier wal"
    assert not Path(f"{taken}-2").exists()


def test_set_aside_keeps_the_wal_with_its_database(tmp_path: Path, clock: FakeClock) -> None:
    # A newer-schema database whose latest commits live only in its WAL.
    source = tmp_path / "source.db"
    make_real_db(source, treatments=2)
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    writer.execute("INSERT INTO events (ts, kind, code, message) VALUES (1, 'info', 'W', 'wal')")
    db_path = tmp_path / "history.db"
    shutil.copyfile(source, db_path)
    shutil.copyfile(f"{source}-wal", f"{db_path}-wal")
    writer.close()
    main_bytes, wal_bytes = db_path.read_bytes(), Path(f"{db_path}-wal").read_bytes()
    assert len(wal_bytes) > 0

    with History(db_path, clock=clock) as h:
        expected = set_aside_name(db_path)
        assert h.set_aside[:2] == [expected, Path(f"{expected}-wal")]
        assert "newer than this code" in (h.damage_reason or "")
    assert expected.read_bytes() == main_bytes
    assert Path(f"{expected}-wal").read_bytes() == wal_bytes
    # The pair still opens as the database it was, WAL commits included.
    ro = sqlite3.connect(expected.as_uri() + "?mode=ro", uri=True)
    assert ro.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
    assert ro.execute("SELECT message FROM events WHERE code = 'W'").fetchone() == ("wal",)
    ro.close()


def test_orphan_wal_without_its_database_is_set_aside(tmp_path: Path, clock: FakeClock) -> None:
    # SQLite deletes a WAL it finds next to a missing/empty database; it may hold commits.
    source = tmp_path / "source.db"
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE precious (x)")
    db_path = tmp_path / "history.db"
    shutil.copyfile(f"{source}-wal", f"{db_path}-wal")
    writer.close()
    wal_bytes = Path(f"{db_path}-wal").read_bytes()
    with History(db_path, clock=clock) as h:
        assert h.set_aside == [Path(f"{set_aside_name(db_path)}-wal")]
        assert "journal" in (h.damage_reason or "")
        assert h.events()[0].code == "HISTORY_DAMAGED"
    assert h.set_aside[0].read_bytes() == wal_bytes


def test_hot_rollback_journal_is_recovered_not_set_aside(db_path: Path, clock: FakeClock) -> None:
    make_real_db(db_path, treatments=3)
    before = snapshot(db_path)
    # A process dies mid-transaction in rollback-journal mode, leaving a hot journal.
    script = (
        "import os, signal, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode = DELETE')\n"
        "c.execute('PRAGMA cache_size = 1')\n"
        "c.execute('BEGIN')\n"
        "for i in range(3000):\n"
        "    c.execute(\"INSERT INTO events (ts, kind, code, message) VALUES (1, 'info', 'X', ?)\","
        " ('y' * 100,))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db_path)], check=False, timeout=30)
    assert Path(f"{db_path}-journal").stat().st_size > 0
    with History(db_path, clock=clock) as h:
        assert h.set_aside == [] and h.damage_reason is None
        assert h._conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert snapshot(db_path) == before


def test_a_directory_at_the_path_is_an_error_not_damage(db_path: Path) -> None:
    db_path.mkdir()
    with pytest.raises(HistoryError, match="not a regular file"):
        History(db_path).open()
    assert db_path.is_dir() and list(db_path.parent.iterdir()) == [db_path]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "history.db"
    with pytest.raises(HistoryError, match="does not exist"):
        History(path).open()
    assert not path.parent.exists()


def _skip_unless_permissions_apply(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        probe.read_bytes()
    except PermissionError:
        return
    finally:
        probe.chmod(0o600)
        probe.unlink()
    pytest.skip("this user bypasses file permissions (root with CAP_DAC_OVERRIDE)")


def test_an_unreadable_file_is_an_error_not_damage(db_path: Path) -> None:
    _skip_unless_permissions_apply(db_path.parent)
    _garbage(db_path)
    db_path.chmod(0)
    try:
        with pytest.raises(HistoryError, match="cannot read"):
            History(db_path).open()
        assert list(db_path.parent.iterdir()) == [db_path]
    finally:
        db_path.chmod(0o600)


def test_damage_in_a_read_only_directory_is_an_error(db_path: Path) -> None:
    _skip_unless_permissions_apply(db_path.parent)
    _garbage(db_path)
    original = db_path.read_bytes()
    db_path.parent.chmod(0o500)
    try:
        with pytest.raises(HistoryError, match="could not be set aside"):
            History(db_path).open()
    finally:
        db_path.parent.chmod(0o700)
    assert db_path.read_bytes() == original
    assert list(db_path.parent.iterdir()) == [db_path]


def test_a_healthy_file_in_a_read_only_directory_is_an_error(db_path: Path) -> None:
    _skip_unless_permissions_apply(db_path.parent)
    make_real_db(db_path, treatments=1)
    db_path.parent.chmod(0o500)
    try:
        with pytest.raises(HistoryError):
            History(db_path).open()
    finally:
        db_path.parent.chmod(0o700)
    assert [p.name for p in db_path.parent.iterdir() if "damaged" in p.name] == []


# --------------------------------------------------------------------------------------------
# Real crashes: SIGKILL a writer process at varied moments
# --------------------------------------------------------------------------------------------


def _load_writer():
    spec = importlib.util.spec_from_file_location("history_writer", WRITER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stored_step(writer, rec: TreatmentRecord) -> int | None:
    """Which checkpoint step's figures `rec` holds (0: just begun), or None if none match."""
    if rec.charge_uc == 0 and rec.zones == () and rec.contact_quality_pct is None:
        return 0
    for step in range(1, writer.CHECKPOINTS + 1):
        s, zones = writer.figures(rec.id, step)
        stored = (
            rec.active_s,
            rec.charge_uc,
            rec.net_dc_charge_uc,
            rec.mean_current_ua,
            rec.peak_current_ua,
            rec.contact_quality_pct,
        )
        if stored == (
            s.active_s,
            s.charge_uc,
            s.net_dc_charge_uc,
            s.mean_current_ua,
            s.peak_current_ua,
            s.contact_quality_pct,
        ) and rec.zones == tuple(sorted(zones, key=lambda z: z.zone)):
            return step
    return None


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_at_any_moment_loses_no_committed_write(tmp_path: Path) -> None:
    writer = _load_writer()
    path = tmp_path / "crash.db"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    rng = random.Random(20240603)
    # ("lines", n): kill after n committed lines; ("sleep", s): kill after s seconds, unread.
    rounds = [("sleep", 0.0), ("lines", 1)]
    rounds += [("lines", rng.randint(2, 80)) for _ in range(8)]
    rounds += [("sleep", rng.uniform(0.02, 0.25)) for _ in range(4)]
    rng.shuffle(rounds)

    committed: dict[int, tuple[float, float, str]] = {}  # treatment id -> printed figures
    printed_step: dict[int, int] = {}  # treatment id -> last step printed
    events: dict[int, int] = {}  # event id -> treatment id
    unprinted: set[int] = set()  # treatments whose BEGUN line the kill cut off
    kills_with_open_treatment = 0
    for mode, amount in rounds:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            head = []
            if mode == "lines":
                for _ in range(int(amount)):
                    line = proc.stdout.readline()
                    assert line, f"writer ended early: {proc.stderr.read()}"
                    head.append(line)
            else:
                time.sleep(amount)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            # Read through the same buffered file objects: readline() may have read ahead.
            out, err = proc.stdout.read(), proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert "Traceback" not in err, err

        # Only complete lines count: each was printed after its commit returned.
        for line in (*head, *out.splitlines(keepends=True)):
            if not line.endswith("\n"):
                continue
            word, *rest = line.split()
            if word == "BEGUN":
                printed_step[int(rest[0])] = 0
            elif word == "CHECKPOINT":
                printed_step[int(rest[0])] = int(rest[1])
            elif word == "COMMITTED":
                tid = int(rest[1])
                committed[tid] = (float(rest[2]), float(rest[3]), rest[4])
                printed_step[tid] = writer.CHECKPOINTS
            elif word == "EVENT":
                events[int(rest[0])] = int(rest[1])

        if not path.exists():
            continue  # killed before the database was created
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        conn.close()

        with History(path, clock=FakeClock()) as h:
            assert h.set_aside == [], h.damage_reason  # a crash is never "damage"
            records = {r.id: r for r in h.recent(limit=100_000)}
            for tid, (charge_uc, active_s, reason) in committed.items():
                rec = records[tid]
                assert (rec.charge_uc, rec.active_s, rec.end_reason) == (
                    charge_uc,
                    active_s,
                    reason,
                )
                assert _stored_step(writer, rec) == writer.CHECKPOINTS
            for tid, rec in records.items():
                step = _stored_step(writer, rec)
                assert step is not None, rec
                # At most the one write in flight at the kill may be beyond the printed state.
                assert step in (printed_step.get(tid, 0), printed_step.get(tid, 0) + 1), rec
                if tid not in printed_step and tid not in unprinted:
                    assert tid == max(records)  # only this round's last begin can be unprinted
                    unprinted.add(tid)
            unfinished = sorted(tid for tid, rec in records.items() if rec.ended_at is None)
            assert len(unfinished) <= 1
            stored_events = {e.id: e for e in h.events(limit=100_000)}
            for event_id, tid in events.items():
                assert stored_events[event_id].treatment_id == tid
            assert h.recover_interrupted() == unfinished
            kills_with_open_treatment += bool(unfinished)
            for tid in unfinished:
                rec = h.treatment(tid)
                assert rec is not None and rec.end_reason == "interrupted"
                assert rec.ended_at == rec.updated_at
                assert _stored_step(writer, rec) == _stored_step(writer, records[tid])

    assert len(committed) >= 10  # the rounds did real work
    assert kills_with_open_treatment >= 3  # and often killed mid-treatment


# ---------------------------------------------------------------- the daemon's history worker
def test_the_engines_history_calls_run_ahead_of_bulk_reads(tmp_path):
    # Issue 6 item 10: a start's reads and writes waited behind 2000 queued exports (FIFO).
    import threading

    from hw.service.daemon import HistoryWorker

    w = HistoryWorker(tmp_path / "history.db")
    w.start()
    try:
        gate, busy = threading.Event(), threading.Event()
        order: list[str] = []
        first = w.submit(lambda h: (busy.set(), gate.wait(5), order.append("running")))
        assert busy.wait(5)  # the worker is inside a (bulk) job
        bulk = [w.submit(lambda h, i=i: order.append(f"bulk{i}")) for i in range(3)]
        urgent = w.submit(
            lambda h: order.append("urgent") or h.active_s_on(dt.date.today()), urgent=True
        )
        gate.set()
        assert urgent.result(5) == 0.0
        for f in [first, *bulk]:
            f.result(5)
        assert order == ["running", "urgent", "bulk0", "bulk1", "bulk2"]
    finally:
        w.stop()


def test_stopping_the_worker_keeps_the_engines_writes_and_drops_queued_bulk_reads(tmp_path):
    import threading

    from hw.service.daemon import HistoryWorker

    w = HistoryWorker(tmp_path / "history.db")
    w.start()
    gate, busy = threading.Event(), threading.Event()
    w.submit(lambda h: (busy.set(), gate.wait(5)))
    assert busy.wait(5)
    bulk = w.submit(lambda h: h.recent(10))
    write = w.submit(lambda h: h.begin_treatment("demo", "Demo"), urgent=True)
    stopper = threading.Thread(target=w.stop)
    stopper.start()
    gate.set()
    stopper.join(10)
    assert write.result(0) == 1  # the record was written before the worker stopped
    assert not bulk.done()  # dropped, not run: a stop does not wait for a history flood
    with History(tmp_path / "history.db") as h:
        assert [r.id for r in h.recent(5)] == [1]


def test_a_version_1_history_is_upgraded_without_losing_a_record(tmp_path):
    """Schema 2 adds the screenings table; a device's existing treatments stay as they were."""
    import sqlite3

    from hw.history import schema as hmod

    db = tmp_path / "history.db"
    conn = sqlite3.connect(db)
    hmod._migrate_to_1(conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO treatments (program_id, program_name, started_at, ended_at, end_reason,"
        " active_s, charge_uc, updated_at) VALUES ('demo', 'Demo', 1.0, 17.0, 'finished', 16.0,"
        " 800.0, 17.0)"
    )
    conn.commit()
    conn.close()
    with History(db) as h:
        (rec,) = h.recent(5)
        assert rec.program_id == "demo" and rec.end_reason == "finished" and rec.charge_uc == 800.0
        assert h.last_screening() is None
        assert h.record_screening({"implant": False})["passed"] is True
    assert snapshot(db)["user_version"] == 2
