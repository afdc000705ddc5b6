"""The service's history: one thread owns the SQLite History, and the engine's Recorder over it.

:class:`HistoryWorker` runs every history call on its ``history`` thread (the only one that opens
SQLite), the engine's records before any reader's query; the service thread never waits on the
disk. :class:`HistoryRecorder` is the engine's Recorder (hw.service.engine.Recorder) over it.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import itertools
import logging
import queue
import threading
from pathlib import Path

from hw.history import History, TreatmentSummary, ZoneSummary

log = logging.getLogger("hw")

URGENT, BULK = 0, 1  # history work order: the engine's records before any reader's query


class HistoryWorker:
    """Owns the History on one thread; the service thread never waits on the disk.

    Work runs in order of priority, then of arrival: the engine's calls (``urgent=True``) go
    ahead of queued bulk reads (history, export), so a start is not stuck behind a flood."""

    def __init__(self, path: Path):
        self.path = path
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)
        self.history: History | None = None
        self._ready = concurrent.futures.Future()

    def start(self) -> History:
        self._thread.start()
        return self._ready.result(timeout=30)

    def _run(self) -> None:
        try:
            h = History(self.path)
            h.open()
            self.history = h
            self._ready.set_result(h)
        except BaseException as e:  # noqa: BLE001 - reported to the starter
            self._ready.set_exception(e)
            return
        while True:
            _, _, item = self._q.get()
            if item is None:
                break
            fn, fut = item
            try:
                result = fn(h)
                if fut is not None:
                    fut.set_result(result)
            except Exception as e:  # noqa: BLE001
                if not isinstance(e, LookupError):  # a missing record is an answer, not an error
                    log.error("history: %s: %s", type(e).__name__, e)
                if fut is not None:
                    fut.set_exception(e)
        h.close()

    def _put(self, urgent: bool, item) -> None:
        self._q.put((URGENT if urgent else BULK, next(self._seq), item))

    def submit(self, fn, *, urgent: bool = False) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._put(urgent, (fn, fut))
        return fut

    def post(self, fn, *, urgent: bool = False) -> None:
        self._put(urgent, (fn, None))

    def call(self, fn, timeout: float = 5.0):
        return self.submit(fn, urgent=True).result(timeout=timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            # After the engine's records already queued; bulk reads still queued are dropped.
            self._q.put((URGENT, next(self._seq), None))
            self._thread.join(10)


class HistoryRecorder:
    """The engine's Recorder, backed by the history worker. Never blocks: every call returns a
    future (urgent work for the worker) that the engine polls; a failure is the engine's to
    act on (it refuses the start or stops the treatment), never assumed away here."""

    def __init__(self, worker: HistoryWorker, today=_dt.date.today):
        self.w = worker
        self.today = today

    def begin(self, program_id: str, program_name: str) -> concurrent.futures.Future:
        return self.w.submit(lambda h: h.begin_treatment(program_id, program_name), urgent=True)

    @staticmethod
    def _summaries(summary: dict, zones: dict):
        s = TreatmentSummary(**summary)
        z = [ZoneSummary(zone=name, **fig) for name, fig in zones.items()]
        return s, z

    def _write(self, fn) -> concurrent.futures.Future:
        try:
            return self.w.submit(fn(), urgent=True)
        except Exception as e:  # noqa: BLE001 - figures the history cannot take: a failed write
            fut: concurrent.futures.Future = concurrent.futures.Future()
            fut.set_exception(e)
            return fut

    def checkpoint(self, treatment_id: int, summary: dict, zones: dict):
        def job():
            s, z = self._summaries(summary, zones)
            return lambda h: h.checkpoint_treatment(treatment_id, s, z)

        return self._write(job)

    def finish(self, treatment_id, reason, summary, zones, fault_code):
        def job():
            s, z = self._summaries(summary, zones)
            return lambda h: h.finish_treatment(treatment_id, reason, s, z, fault_code)

        return self._write(job)

    def event(self, kind: str, code: str, message: str, treatment_id=None) -> None:
        code = code or "NONE"
        message = message.strip() or kind
        self.w.post(lambda h: h.record_event(kind, code, message, treatment_id), urgent=True)

    def active_s_today(self) -> concurrent.futures.Future:
        day = self.today()
        return self.w.submit(lambda h: h.active_s_on(day), urgent=True)

    def last_screening(self) -> concurrent.futures.Future:
        return self.w.submit(lambda h: h.last_screening(), urgent=True)


def unacknowledged_fault(h: History) -> str | None:
    """The code of a fault recorded after the last acknowledgement, if any."""
    last_fault = None
    for e in h.events(limit=1000):
        if e.kind == "fault":
            last_fault = e.code
        elif e.kind == "acknowledge":
            last_fault = None
    return last_fault
