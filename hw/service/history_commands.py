"""The history's requests (``history``, ``treatment``, ``totals``, ``events``, ``export_csv``,
``screening``, ``screening_status``): run on the history thread (hw.service.recorder.HistoryWorker),
which also encodes their replies; the service thread only writes the bytes.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import io
from collections.abc import Callable

from hw.service import protocol as P
from hw.service.recorder import HistoryWorker

BULK_CHUNK_ITEMS = 10  # records encoded per json.dumps call (the C encoder holds the GIL)
BULK_CHUNK_CHARS = 16 * 1024  # CSV characters encoded per call


class HistoryCommands:
    """``today()`` gives the day for ``totals``; ``daily_max_s`` is the configured daily limit."""

    def __init__(self, worker: HistoryWorker, today: Callable[[], _dt.date], daily_max_s: float):
        self.worker = worker
        self.today = today
        self.daily_max_s = daily_max_s

    def query(self, cmd: str, a: dict, req_id) -> concurrent.futures.Future:
        """Runs on the history thread, which also encodes the reply in bounded pieces (see
        ``P.reply_ok_chunked``): no single json.dumps of a large reply ever holds the GIL long
        enough to stall the control loop, and the service thread only writes the bytes."""
        w = self.worker

        def reply(job):
            return w.submit(
                lambda h: P.reply_ok_chunked(req_id, job(h), BULK_CHUNK_ITEMS, BULK_CHUNK_CHARS)
            )

        if cmd == "history":
            limit = a.get("limit", 20)
            return reply(lambda h: [record_dict(r) for r in h.recent(limit)])
        if cmd == "treatment":
            tid = a["id"]

            def one(h):
                r = h.treatment(tid)
                if r is None:
                    raise LookupError(f"no treatment {tid}")
                return record_dict(r)

            return reply(one)
        if cmd == "totals":
            today = self.today()
            return reply(
                lambda h: {
                    **h.totals(),
                    "streak_days": h.streak_days(today),
                    "today_active_s": h.active_s_on(today),
                    "daily_max_s": self.daily_max_s,
                }
            )
        if cmd == "events":
            since, limit = a.get("since_id"), a.get("limit", 100)
            return reply(lambda h: [e.__dict__ for e in h.events(limit, since)])
        if cmd == "export_csv":
            zones = a.get("what") == "zones"

            def export(h):
                f = io.StringIO()
                (h.export_zones_csv if zones else h.export_csv)(f)
                return {"csv": f.getvalue()}

            return reply(export)
        raise P.ProtocolError(P.UNKNOWN_COMMAND, cmd)

    def screening(self, cmd: str, a: dict, req_id) -> concurrent.futures.Future:
        """``screening`` records the answers; ``screening_status`` says whether one is on record.
        Kept with the history (on its thread; the engine's work goes first)."""
        answers = a.get("answers")

        def job(h):
            if cmd == "screening":
                return P.reply_ok(req_id, h.record_screening(answers))
            last = h.last_screening()
            return P.reply_ok(
                req_id, {"on_record": False} if last is None else {"on_record": True, **last}
            )

        return self.worker.submit(job, urgent=True)


def record_dict(r) -> dict:
    d = dict(r.__dict__)
    d["zones"] = [z.__dict__ for z in r.zones]
    return d
