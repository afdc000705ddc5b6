"""Durable treatment history: one SQLite file, written only by the hardware daemon.

The package: :mod:`~hw.history.schema` (tables, migrations), :mod:`~hw.history.records` (value
types and argument checks), :mod:`~hw.history.files` (judging and setting aside a file on disk),
:mod:`~hw.history.store` (:class:`History`: opening, transactions, writes) and
:mod:`~hw.history.queries` (reads and CSV exports).

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

from hw.history.records import (
    DAMAGED_EVENT_CODE,
    END_REASONS,
    STREAK_MIN_ACTIVE_S,
    EventRecord,
    HistoryError,
    TreatmentRecord,
    TreatmentSummary,
    ZoneSummary,
)
from hw.history.schema import CSV_TREATMENT_HEADER, CSV_ZONE_HEADER, SCHEMA_VERSION
from hw.history.store import History

__all__ = [
    "CSV_TREATMENT_HEADER",
    "CSV_ZONE_HEADER",
    "DAMAGED_EVENT_CODE",
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
