"""The engine's start of a treatment, which fails closed: no output before the history answered.

A start first reads today's used treatment time (the daily limit) and the latest contraindication
check on record (a "yes" to any question refuses every start until a check with none is recorded;
none on record refuses too, except on the simulated board's daemon, whose tools and tests start
without one; a check recorded with a yes also ends a start under way: ``Engine.contraindicated``),
runs the self-test when one is due (the first treatment of a day, any after a fault),
then begins the treatment's record; only when each answered OK in time (``START_TIMEOUT_S``
each) is the loop asked for output. A refused start returns the engine to where it was and leaves
nothing switched on. These are the Engine's own steps (they read and set its state: ``eng`` is
the Engine), kept in a file of their own.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hw.config import Program
from hw.control.loop import CommandRefused
from hw.service.protocol import SCREENING_QUESTIONS
from hw.service.states import EngineRefused, State
from hw.service.treatment import Treatment

if TYPE_CHECKING:
    from hw.service.engine import Engine

START_TIMEOUT_S = 2.0  # how long a start waits for each history answer before it is refused
OUTPUT_MARGIN_S = 5.0  # the loop's own bound: the program's remaining length plus this


@dataclass
class PendingStart:
    """A start waiting for the history: today's used time first, then the new record's id."""

    program: Program
    level: int
    back: State  # where a refused start returns to
    ticket: Future  # -> the state the start reached, or EngineRefused
    deadline_s: float
    used: Future | None = None
    screening: Future | None = None
    record: Future | None = None
    daily_left_s: float = 0.0


def start(eng: Engine, program_id: str, level: int | None = None) -> Future:
    """Ask for a treatment. Returns a future: the state it reached (``contact_check``, or
    ``self_test`` when one runs first), or EngineRefused. Raises EngineRefused when the answer
    is known at once (then nothing changed). Output comes on only after the history answered
    today's used time and began the record."""
    if eng.state not in (State.IDLE, State.READY, State.FINISHED):
        raise EngineRefused(f"a treatment cannot start now (the device is {eng.state})")
    try:
        program = eng.cfg.program(program_id)
    except KeyError:
        raise EngineRefused(f"no program {program_id!r}") from None
    level = 1 if level is None else level
    if not 1 <= level <= eng.cfg.limits.level_count:
        raise EngineRefused(f"level must be 1..{eng.cfg.limits.level_count}")
    st = PendingStart(program, level, eng.state, Future(), eng.clock() + START_TIMEOUT_S)
    st.used = eng.recorder.active_s_today()
    st.screening = eng.recorder.last_screening()
    eng._starting = st
    advance(eng)
    if st.ticket.done() and st.ticket.exception() is not None:
        raise st.ticket.exception()
    return st.ticket


def advance(eng: Engine) -> None:
    """Move a waiting start on as far as the history's answers allow (never blocks)."""
    st = eng._starting
    if st is None:
        return
    now = eng.clock()
    if st.used is not None:
        if not st.used.done():
            if now > st.deadline_s:
                return refuse(
                    eng, "the history did not answer in time; today's treatment time is unknown"
                )
            return eng._go(State.STARTING)
        e = st.used.exception()
        if e is not None:
            return refuse(
                eng,
                f"cannot read today's treatment time ({type(e).__name__}: {e}); "
                "no treatment without it",
            )
        why = screening_refusal(st.screening, eng.require_screening)
        if why == "wait":
            if now > st.deadline_s:
                return refuse(
                    eng, "the history did not answer in time; the contraindication check is unknown"
                )
            return eng._go(State.STARTING)
        if why:
            return refuse(eng, why)
        used = float(st.used.result()) + eng._unrecorded_s.get(eng.today(), 0.0)
        st.used = st.screening = None
        left = eng.cfg.limits.daily_max_s - used
        if not left >= 10.0:  # NaN refuses too
            return refuse(
                eng,
                f"today's treatment time ({eng.cfg.limits.daily_max_s / 60:.0f} min) is used up",
            )
        st.daily_left_s = left
        if eng._post_needed():
            # The first treatment of a day, and any after a fault, is preceded by a self-test.
            try:
                eng.loop.run_post()
            except CommandRefused as e:
                return refuse(eng, str(e))
            st.back = State.READY
            eng._go(State.SELF_TEST)
            if not st.ticket.done():
                st.ticket.set_result(str(State.SELF_TEST))
            return
    if eng.state == State.SELF_TEST:
        return  # the record is begun once the self-test passed
    if st.record is None:
        blocker = eng.loop.start_blocker()
        if blocker:
            return refuse(eng, blocker)
        st.deadline_s = now + START_TIMEOUT_S
        st.record = eng.recorder.begin(st.program.id, st.program.name)
    if not st.record.done():
        if now > st.deadline_s:
            return refuse(
                eng, "the history did not answer in time; the treatment cannot be recorded"
            )
        return eng._go(State.STARTING)
    e = st.record.exception()
    if e is not None:
        return refuse(
            eng,
            f"the treatment cannot be recorded ({type(e).__name__}: {e}); nothing was switched on",
        )
    tid = st.record.result()
    if isinstance(tid, bool) or not isinstance(tid, int):
        return refuse(eng, f"the history gave no record id ({tid!r}); nothing switched on")
    try:
        begin(eng, st.program, st.level, st.daily_left_s, tid)
    except (EngineRefused, CommandRefused) as e:
        return refuse(eng, str(e))
    eng._starting = None
    if not st.ticket.done():
        st.ticket.set_result(str(eng.state))


def screening_refusal(fut: Future, required: bool = True) -> str | None:
    """Why the contraindication check on record refuses a start ("wait" while it is read), or None.
    Fails closed: only a record whose every question (SCREENING_QUESTIONS) is answered False, and
    marked passed, lets a start go on; an unreadable or malformed one refuses; none on record
    refuses when ``required``."""
    if not fut.done():
        return "wait"
    e = fut.exception()
    if e is not None:
        return (
            f"cannot read the contraindication check on record ({type(e).__name__}: {e}); "
            "no treatment without it"
        )
    last = fut.result()
    if last is None:
        if not required:
            return None
        return "no contraindication check is on record: answer the first-use questions first"
    answers = last.get("answers") if isinstance(last, dict) else None
    if (
        isinstance(answers, dict)
        and last.get("passed") is True
        and all(answers.get(q) is False for q in SCREENING_QUESTIONS)
    ):
        return None
    yes = sorted(str(k) for k, v in answers.items() if v is not False) if answers else []
    return (
        "the contraindication check on record answered yes"
        + (f" ({', '.join(yes)})" if yes else "")
        + ": this device must not be used; see the first-use questions"
    )


def refuse(eng: Engine, reason: str, *, back: bool = True) -> None:
    st, eng._starting = eng._starting, None
    if st is None:
        return
    if st.record is not None:
        eng._orphans.append(st.record)  # a record begun for nothing is closed when it answers
    if back and eng.state == State.STARTING:
        eng._go(st.back)  # (a self-test under way ends by itself)
    if not st.ticket.done():
        st.ticket.set_exception(EngineRefused(reason))
    else:
        eng.emit("start_refused", {"reason": reason})


def begin(eng: Engine, program: Program, level: int, daily_left_s: float, tid: int) -> None:
    step = program.steps[0]
    blocker = eng.loop.start_blocker()
    if blocker:
        raise EngineRefused(blocker)
    max_active = min(eng.cfg.limits.max_output_s, daily_left_s)
    program_s = sum(s.duration_s for s in program.steps)
    # Every treatment starts at level 1; the asked level is reached after contact is found.
    # The loop's own bound is this treatment's length, not only the 30-minute backstop.
    eng.loop.start(
        eng._spec(step),
        eng._ua(1, step),
        max_output_s=min(eng.cfg.limits.max_output_s, min(max_active, program_s) + OUTPUT_MARGIN_S),
    )
    eng.treatment = Treatment(program, level, max_active, tid)
    eng.treatment.next_cue_s = step.relocate_cue_s or float("inf")
    eng.last_summary = None
    eng._last_snap = None
    eng._go(State.CONTACT_CHECK)
    eng.emit("treatment_started", {"program": program.id, "treatment_id": tid})
