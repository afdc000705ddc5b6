"""The treatment record's writes: each checkpoint and finish must answer OK within CHECKPOINT_S.

One that fails or does not answer in time stops the treatment (``record_failed``): a treatment
that cannot be recorded is not counted against the daily limit, so it must not go on. A finish
not stored still counts against today's limit (``Engine._unrecorded_s``). Records begun for a
start that was then given up are closed at zero when they answer. These are the Engine's own
steps (``eng`` is the Engine), kept in a file of their own.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hw.service.states import TREATING, State
from hw.service.treatment import ZERO_SUMMARY

if TYPE_CHECKING:
    from hw.service.engine import Engine

log = logging.getLogger("hw")

CHECKPOINT_S = 5.0  # also how long a record write may stay unanswered before the treatment stops


@dataclass
class RecordWrite:
    """A checkpoint or finish of a treatment's record, waiting for the history's answer."""

    what: str  # "checkpoint" or "finish"
    treatment_id: int
    fut: Future
    deadline_s: float
    active_s: float  # the treatment's output time when it was asked


def check(eng: Engine, now: float) -> None:
    """Every record write must answer OK within CHECKPOINT_S; else the treatment stops."""
    keep = []
    for w in eng._writes:
        if w.fut.done():
            e = w.fut.exception()
            if e is not None:
                failed(eng, w, f"{type(e).__name__}: {e}")
        elif now > w.deadline_s:
            failed(eng, w, f"no answer within {CHECKPOINT_S:.0f} s")
        else:
            keep.append(w)
    eng._writes = keep
    if eng._orphans:
        left = []
        for fut in eng._orphans:
            if not fut.done():
                left.append(fut)
            elif fut.exception() is None:  # begun, never used: close it at zero
                eng.recorder.finish(fut.result(), "stopped", dict(ZERO_SUMMARY), {}, None)
        eng._orphans = left


def failed(eng: Engine, w: RecordWrite, why: str) -> None:
    msg = f"the {w.what} of treatment {w.treatment_id} could not be recorded ({why})"
    log.error("RECORD_FAILED %s", msg)
    tr = eng.treatment
    if w.what == "finish":
        # Not stored: count it against today's limit anyway (the history has not got it).
        day = eng.today()
        eng._unrecorded_s[day] = eng._unrecorded_s.get(day, 0.0) + w.active_s
    stopping = tr is not None and tr.treatment_id == w.treatment_id and eng.state in TREATING
    eng.emit(
        "record_failed",
        {"what": w.what, "treatment_id": w.treatment_id, "reason": why, "stopping": stopping},
    )
    eng.recorder.event("record", "RECORD_FAILED", msg, w.treatment_id)
    if stopping:
        # A treatment that cannot be recorded is not counted against the daily limit: end it.
        tr.end_reason, tr.end_code = "fault", "RECORD_FAILED"
        eng.loop.stop()
        eng._go(State.RAMP_DOWN)
