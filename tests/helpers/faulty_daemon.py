"""The real daemon (``python -m hw``) with faults injected, for the supervision tests.

``MCK_TEST_FAULT`` is a comma-separated list of:

- ``engine_raises``: the recorder's ``checkpoint`` raises inside the engine's periodic call
  (issue 6 item 1: that one exception ended the engine's asyncio task);
- ``history_read``: reading today's treatment time fails (``History.active_s_on``);
- ``history_begin``: a treatment record cannot be begun;
- ``history_write``: checkpoints and finishes of a treatment record fail;
- ``history_slow``: every write to a treatment record takes 400 ms (a slow SD card's commit);
- ``history_query_slow``: every ``history`` query takes 3 s (a slow card under a big history).

History failures raise ``sqlite3.OperationalError("disk I/O error")``, what a failing SD card
gives. Usage: ``python tests/helpers/faulty_daemon.py <the daemon's arguments>``, with the
repository root on PYTHONPATH.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
import time

from hw import history
from hw.service import daemon
from hw.service.main import main as daemon_main


def _disk_error(*_args, **_kwargs):
    raise sqlite3.OperationalError("disk I/O error (injected by the test)")


def _engine_error(*_args, **_kwargs):
    raise RuntimeError("checkpoint raised (injected by the test)")


def _slow(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        time.sleep(0.4)
        return fn(*args, **kwargs)

    return run


def main() -> int:
    faults = {f for f in os.environ.get("MCK_TEST_FAULT", "").split(",") if f}
    known = {
        "engine_raises",
        "history_read",
        "history_begin",
        "history_write",
        "history_slow",
        "history_query_slow",
    }
    unknown = faults - known
    if unknown:
        print(f"unknown MCK_TEST_FAULT {sorted(unknown)}", file=sys.stderr)
        return 2
    if "engine_raises" in faults:
        daemon.HistoryRecorder.checkpoint = _engine_error
    if "history_read" in faults:
        history.History.active_s_on = _disk_error
    if "history_begin" in faults:
        history.History.begin_treatment = _disk_error
    if "history_write" in faults:
        history.History.checkpoint_treatment = _disk_error
        history.History.finish_treatment = _disk_error
    if "history_slow" in faults:
        for name in ("begin_treatment", "checkpoint_treatment", "finish_treatment"):
            setattr(history.History, name, _slow(getattr(history.History, name)))
    if "history_query_slow" in faults:
        recent = history.History.recent

        def slow_recent(self, *args, **kwargs):
            time.sleep(3.0)
            return recent(self, *args, **kwargs)

        history.History.recent = slow_recent
    return daemon_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
