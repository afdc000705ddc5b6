"""The treatment engine: programs become steps, levels and setpoints; an explicit state machine.

States and what moves between them (every other transition is refused)::

    idle --self_test--> self_test --pass--> ready --start--> contact_check
    idle/ready/finished --start--> starting --history answered--> contact_check (or self_test)
    starting --history failed, timeout, stop--> back where it came from (nothing switched on)
    contact_check --contact good 0.5 s--> ramp_up --level reached--> running
    running --level change--> ramp_up
    running/ramp_up --lift-off--> contact_check --skin again--> ramp_up
    running/ramp_up/contact_check --pause--> paused --resume--> ramp_up
    running/... --stop or program end or daily limit--> ramp_down --output off--> finished
    any --trip--> fault --acknowledge--> idle          (a new self-test runs before output)
    finished --start--> contact_check

The engine runs on the daemon's service thread (not the control loop's). It only asks the loop
for things (start, set_target, stop, ...); every limit is still enforced by the loop and the guard.
Every treatment starts at level 1 and ramps; a step never exceeds its cap; timers run only while
current flows; a relocate cue sounds every ``relocate_cue_s`` of treatment time.

Fail closed: the recorder answers through futures (the history worker; the service thread never
waits on the disk). A start reads today's used time and begins the record first; only when both
answered OK is the loop asked for output ("starting" waits at most ``START_TIMEOUT_S``). A
checkpoint or finish that fails (or does not answer within ``CHECKPOINT_S``) stops the treatment
with a ``record_failed`` event. Every ``tick()`` that returns beats the loop's service heartbeat:
an engine that raises or hangs lets the loop trip INTERNAL.
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from hw.config import Config, Program, Step
from hw.control.levels import level_to_ua
from hw.control.loop import CommandRefused, ControlLoop, OutputState
from hw.control.tickhist import sparse
from hw.control.waveform import WaveformSpec
from hw.safety import Fault

log = logging.getLogger("hw")


class State(StrEnum):
    IDLE = "idle"
    STARTING = "starting"
    SELF_TEST = "self_test"
    READY = "ready"
    CONTACT_CHECK = "contact_check"
    RAMP_UP = "ramp_up"
    RUNNING = "running"
    PAUSED = "paused"
    RAMP_DOWN = "ramp_down"
    FINISHED = "finished"
    FAULT = "fault"


TREATING = frozenset({State.CONTACT_CHECK, State.RAMP_UP, State.RUNNING, State.PAUSED})
CONTACT_CONFIRM_S = 0.5
CUE_BEEP_S = 0.08
CHECKPOINT_S = 5.0  # also how long a record write may stay unanswered before the treatment stops
START_TIMEOUT_S = 2.0  # how long a start waits for each history answer before it is refused
OUTPUT_MARGIN_S = 5.0  # the loop's own bound: the program's remaining length plus this
TRANSITIONS_KEPT = 1000
_ZERO_SUMMARY = {
    "active_s": 0.0,
    "charge_uc": 0.0,
    "net_dc_charge_uc": 0.0,
    "mean_current_ua": 0.0,
    "peak_current_ua": 0.0,
    "contact_quality_pct": 0.0,
}


class Recorder(Protocol):
    """Where the engine records (the daemon's history worker; a fake in tests).

    Every call returns at once; the answers come back as futures the engine polls on its tick.
    """

    def begin(self, program_id: str, program_name: str) -> Future[int]: ...

    def checkpoint(self, treatment_id: int, summary: dict, zones: dict) -> Future[None]: ...

    def finish(
        self, treatment_id: int, reason: str, summary: dict, zones: dict, fault_code: str | None
    ) -> Future[None]: ...

    def event(
        self, kind: str, code: str, message: str, treatment_id: int | None = None
    ) -> None: ...

    def active_s_today(self) -> Future[float]: ...


@dataclass
class ZoneDose:
    active_s: float = 0.0
    charge_uc: float = 0.0
    net_uc: float = 0.0
    peak_ua: float = 0.0
    quality_sum: float = 0.0
    quality_n: int = 0

    def as_dict(self) -> dict:
        return {
            "active_s": self.active_s,
            "charge_uc": self.charge_uc,
            "mean_current_ua": self.charge_uc / self.active_s if self.active_s > 0 else 0.0,
            "peak_current_ua": self.peak_ua,
            "contact_quality_pct": self.quality_sum / self.quality_n if self.quality_n else 0.0,
        }


@dataclass
class Treatment:
    program: Program
    level: int  # the level the person asked for (capped per step)
    max_active_s: float
    treatment_id: int | None
    step_index: int = 0
    step_elapsed_s: float = 0.0
    active_s: float = 0.0
    next_cue_s: float = 0.0
    contact_good_s: float = 0.0
    started_ramp: bool = False
    zones: dict[str, ZoneDose] = field(default_factory=dict)
    last_checkpoint_s: float = 0.0
    end_reason: str = "finished"
    end_code: str | None = None  # a fault code of the engine's own (RECORD_FAILED)

    @property
    def step(self) -> Step:
        return self.program.steps[self.step_index]

    @property
    def total_left_s(self) -> float:
        rest = sum(s.duration_s for s in self.program.steps[self.step_index + 1 :])
        return max(0.0, self.step.duration_s - self.step_elapsed_s) + rest


class EngineRefused(Exception):
    """A request the engine cannot carry out now (the message says why)."""


@dataclass
class _Start:
    """A start waiting for the history: today's used time first, then the new record's id."""

    program: Program
    level: int
    back: State  # where a refused start returns to
    ticket: Future  # -> the state the start reached, or EngineRefused
    deadline_s: float
    used: Future | None = None
    record: Future | None = None
    daily_left_s: float = 0.0


@dataclass
class _Write:
    what: str  # "checkpoint" or "finish"
    treatment_id: int
    fut: Future
    deadline_s: float
    active_s: float  # the treatment's output time when it was asked


class Engine:
    def __init__(
        self,
        cfg: Config,
        loop: ControlLoop,
        recorder: Recorder,
        clock: Callable[[], float],
        *,
        today: Callable[[], _dt.date] = _dt.date.today,
        emit: Callable[[str, dict], None] | None = None,
    ):
        self.cfg = cfg
        self.loop = loop
        self.recorder = recorder
        self.clock = clock
        self.today = today
        self.emit = emit or (lambda name, data: None)
        self.state = State.IDLE
        self.treatment: Treatment | None = None
        self.last_summary: dict | None = None
        self.post_day: _dt.date | None = None
        self._starting: _Start | None = None
        self._writes: list[_Write] = []
        self._orphans: list[Future] = []  # begun records whose start was given up
        self._unrecorded_s: dict[_dt.date, float] = {}  # output time history failed to store
        self._last_t = clock()
        self._last_snap = None
        self._beep_off_at: float | None = None
        self._events_seen = 0
        self.transitions: collections.deque[tuple[State, State]] = collections.deque(
            maxlen=TRANSITIONS_KEPT
        )
        loop.add_event_listener(self._loop_event)
        self._loop_events: collections.deque[tuple[float, str, dict]] = collections.deque(
            maxlen=1000
        )
        # From now on the loop expects this engine's heartbeat while output is on.
        loop.service_beat()

    # ------------------------------------------------------------------ helpers
    def _go(self, new: State) -> None:
        if new != self.state:
            self.transitions.append((self.state, new))
            old, self.state = self.state, new
            self.emit("state", {"from": str(old), "to": str(new)})

    def _loop_event(self, t: float, kind: str, data: dict) -> None:
        # Called on the loop thread: only queue (deque.append is atomic).
        self._loop_events.append((t, kind, data))

    def _ua(self, level: int, step: Step) -> float:
        return level_to_ua(min(level, step.max_level), self.cfg.limits, step.max_level)

    @staticmethod
    def _spec(step: Step) -> WaveformSpec:
        return WaveformSpec(step.frequency_hz, step.pulse_width_ms)

    def _post_needed(self) -> bool:
        return not self.loop.guard.post_valid or self.post_day != self.today()

    # ------------------------------------------------------------------ commands
    def self_test(self) -> None:
        if self.state not in (State.IDLE, State.READY, State.FINISHED):
            raise EngineRefused(f"the self-test needs the device idle (it is {self.state})")
        try:
            self.loop.run_post()
        except CommandRefused as e:
            raise EngineRefused(str(e)) from None
        self._go(State.SELF_TEST)

    def start(self, program_id: str, level: int | None = None) -> Future:
        """Ask for a treatment. Returns a future: the state it reached (``contact_check``, or
        ``self_test`` when one runs first), or EngineRefused. Raises EngineRefused when the answer
        is known at once (then nothing changed). Output comes on only after the history answered
        today's used time and began the record."""
        if self.state not in (State.IDLE, State.READY, State.FINISHED):
            raise EngineRefused(f"a treatment cannot start now (the device is {self.state})")
        try:
            program = self.cfg.program(program_id)
        except KeyError:
            raise EngineRefused(f"no program {program_id!r}") from None
        level = 1 if level is None else level
        if not 1 <= level <= self.cfg.limits.level_count:
            raise EngineRefused(f"level must be 1..{self.cfg.limits.level_count}")
        st = _Start(program, level, self.state, Future(), self.clock() + START_TIMEOUT_S)
        st.used = self.recorder.active_s_today()
        self._starting = st
        self._advance_start()
        if st.ticket.done() and st.ticket.exception() is not None:
            raise st.ticket.exception()
        return st.ticket

    def _advance_start(self) -> None:
        """Move a waiting start on as far as the history's answers allow (never blocks)."""
        st = self._starting
        if st is None:
            return
        now = self.clock()
        if st.used is not None:
            if not st.used.done():
                if now > st.deadline_s:
                    return self._refuse_start(
                        "the history did not answer in time; today's treatment time is unknown"
                    )
                return self._go(State.STARTING)
            e = st.used.exception()
            if e is not None:
                return self._refuse_start(
                    f"cannot read today's treatment time ({type(e).__name__}: {e}); "
                    "no treatment without it"
                )
            used = float(st.used.result()) + self._unrecorded_s.get(self.today(), 0.0)
            st.used = None
            left = self.cfg.limits.daily_max_s - used
            if not left >= 10.0:  # NaN refuses too
                return self._refuse_start(
                    f"today's treatment time ({self.cfg.limits.daily_max_s / 60:.0f} min)"
                    " is used up"
                )
            st.daily_left_s = left
            if self._post_needed():
                # The first treatment of a day, and any after a fault, is preceded by a self-test.
                try:
                    self.loop.run_post()
                except CommandRefused as e:
                    return self._refuse_start(str(e))
                st.back = State.READY
                self._go(State.SELF_TEST)
                if not st.ticket.done():
                    st.ticket.set_result(str(State.SELF_TEST))
                return
        if self.state == State.SELF_TEST:
            return  # the record is begun once the self-test passed
        if st.record is None:
            blocker = self.loop.start_blocker()
            if blocker:
                return self._refuse_start(blocker)
            st.deadline_s = now + START_TIMEOUT_S
            st.record = self.recorder.begin(st.program.id, st.program.name)
        if not st.record.done():
            if now > st.deadline_s:
                return self._refuse_start(
                    "the history did not answer in time; the treatment cannot be recorded"
                )
            return self._go(State.STARTING)
        e = st.record.exception()
        if e is not None:
            return self._refuse_start(
                f"the treatment cannot be recorded ({type(e).__name__}: {e});"
                " nothing was switched on"
            )
        tid = st.record.result()
        if isinstance(tid, bool) or not isinstance(tid, int):
            return self._refuse_start(
                f"the history gave no record id ({tid!r}); nothing switched on"
            )
        try:
            self._begin(st.program, st.level, st.daily_left_s, tid)
        except (EngineRefused, CommandRefused) as e:
            return self._refuse_start(str(e))
        self._starting = None
        if not st.ticket.done():
            st.ticket.set_result(str(self.state))

    def _refuse_start(self, reason: str, *, back: bool = True) -> None:
        st, self._starting = self._starting, None
        if st is None:
            return
        if st.record is not None:
            self._orphans.append(st.record)  # a record begun for nothing is closed when it answers
        if back and self.state == State.STARTING:
            self._go(st.back)  # (a self-test under way ends by itself)
        if not st.ticket.done():
            st.ticket.set_exception(EngineRefused(reason))
        else:
            self.emit("start_refused", {"reason": reason})

    def _begin(self, program: Program, level: int, daily_left_s: float, tid: int) -> None:
        step = program.steps[0]
        blocker = self.loop.start_blocker()
        if blocker:
            raise EngineRefused(blocker)
        max_active = min(self.cfg.limits.max_output_s, daily_left_s)
        program_s = sum(s.duration_s for s in program.steps)
        # Every treatment starts at level 1; the asked level is reached after contact is found.
        # The loop's own bound is this treatment's length, not only the 30-minute backstop.
        self.loop.start(
            self._spec(step),
            self._ua(1, step),
            max_output_s=min(
                self.cfg.limits.max_output_s, min(max_active, program_s) + OUTPUT_MARGIN_S
            ),
        )
        self.treatment = Treatment(program, level, max_active, tid)
        self.treatment.next_cue_s = step.relocate_cue_s or float("inf")
        self.last_summary = None
        self._last_snap = None
        self._go(State.CONTACT_CHECK)
        self.emit("treatment_started", {"program": program.id, "treatment_id": tid})

    def cancel_pending_start(self) -> None:
        """The client that asked for a start is gone: don't start (nor wait for the history)."""
        self._refuse_start("the client that asked for the start is gone")

    def set_level(self, level: int) -> int:
        tr = self._need_treatment()
        cap = min(tr.step.max_level, self.cfg.limits.level_count)
        if not 1 <= level <= cap:
            raise EngineRefused(f"level must be 1..{cap} in this step")
        tr.level = level
        if self.state in (State.RAMP_UP, State.RUNNING) or (
            self.state == State.CONTACT_CHECK and tr.started_ramp
        ):
            self.loop.set_target(self._ua(level, tr.step))
            if self.state == State.RUNNING:
                self._go(State.RAMP_UP)
        return level

    def level_step(self, delta: int) -> int:
        tr = self._need_treatment()
        cap = min(tr.step.max_level, self.cfg.limits.level_count)
        # From the level in effect (a step's cap may hold it below the asked one). No wrap-around:
        # at the top it stays at the top (a wrap to 1 surprises; a wrap to the top stings).
        return self.set_level(max(1, min(cap, min(tr.level, cap) + delta)))

    def pause(self) -> None:
        if self.state not in (State.CONTACT_CHECK, State.RAMP_UP, State.RUNNING):
            raise EngineRefused(f"nothing to pause (the device is {self.state})")
        self.loop.stop()
        self._go(State.PAUSED)

    def resume(self) -> None:
        tr = self._need_treatment()
        if self.state != State.PAUSED:
            raise EngineRefused(f"not paused (the device is {self.state})")
        if self.loop.state != OutputState.OFF:
            raise EngineRefused("the output is still ramping down; try again in a moment")
        blocker = self.loop.start_blocker()
        if blocker:
            raise EngineRefused(blocker)
        used = max(tr.active_s, sum(z.active_s for z in tr.zones.values()))
        left = min(tr.max_active_s - used, tr.total_left_s)
        # resume: the loop keeps this treatment's accounting and first returns what a lift-off
        # left unbalanced (its state is then `balance`; the timers wait for ramp_up).
        self.loop.start(
            self._spec(tr.step),
            self._ua(tr.level, tr.step),
            max_output_s=min(self.cfg.limits.max_output_s, max(0.0, left) + OUTPUT_MARGIN_S),
            resume=True,
        )
        tr.started_ramp = True
        self._go(State.RAMP_UP)

    def stop(self, reason: str = "stopped") -> None:
        if self.state == State.STARTING:
            self._refuse_start("stopped before the output came on")
            return
        tr = self.treatment
        if self.state not in TREATING or tr is None:
            raise EngineRefused(f"no treatment to stop (the device is {self.state})")
        tr.end_reason = reason
        self.loop.stop()
        self._go(State.RAMP_DOWN)

    def estop(self, detail: str) -> None:
        self.loop.estop(detail)

    def acknowledge(self) -> None:
        if self.state != State.FAULT and not self.loop.guard.tripped:
            raise EngineRefused("there is no fault to acknowledge")
        fault = self.loop.guard.fault
        try:
            self.loop.acknowledge()
        except CommandRefused as e:
            raise EngineRefused(str(e)) from None
        if self.treatment is not None:
            # Acknowledged before the engine's tick saw the trip: close the record first.
            code = fault.code if fault else None
            self._end_treatment("estop" if code == Fault.ESTOP else "fault", fault)
        self.recorder.event("acknowledge", str(fault.code) if fault else "NONE", "acknowledged")
        self._go(State.IDLE)

    def _need_treatment(self) -> Treatment:
        if self.treatment is None or self.state not in TREATING:
            raise EngineRefused(f"no treatment is running (the device is {self.state})")
        return self.treatment

    # ------------------------------------------------------------------ the tick
    def tick(self) -> None:
        """Advance timers and states. Called at ~50 Hz on the service thread. Only a tick that
        returns beats the loop's heartbeat: one that raises lets the loop cut the output."""
        self._tick()
        self.loop.service_beat()

    def _tick(self) -> None:
        now = self.clock()
        dt = max(0.0, now - self._last_t)
        self._last_t = now
        loop = self.loop
        self._check_writes(now)
        while self._loop_events:
            t, kind, data = self._loop_events.popleft()
            if kind in ("contact_lost", "contact_restored"):
                self.emit(kind, data)
            elif kind == "post":
                self.emit("post", self.loop.post_result or data)
                self.recorder.event(
                    "post",
                    "PASS" if data.get("passed") else "FAIL",
                    data.get("reason", "self-test passed"),
                )
            elif kind == "fault":
                tid = self.treatment.treatment_id if self.treatment else None
                self.recorder.event(
                    "fault", data["code"], f"{data['message']} {data['detail']}", tid
                )
                self.emit("fault", data)
        if self._beep_off_at is not None and now >= self._beep_off_at:
            loop.board.lines.buzzer.off()
            self._beep_off_at = None

        if loop.guard.tripped:
            if self.state != State.FAULT:
                fault = loop.guard.fault
                code = fault.code if fault else None
                self._end_treatment("estop" if code == Fault.ESTOP else "fault", fault)
                self._refuse_start(
                    f"a fault is latched ({code or 'being cut'}); acknowledge it first", back=False
                )
                self._go(State.FAULT)
            return
        if self.state == State.FAULT:
            return  # acknowledged elsewhere moves it on
        if self.state == State.SELF_TEST:
            if loop.state != OutputState.POST and loop.post_result is not None:
                if loop.post_result["passed"]:
                    self.post_day = self.today()
                    self._go(State.READY)
                    self._advance_start()  # a start that waited for the self-test
            return
        if self.state == State.STARTING:
            self._advance_start()
            return
        if self.state == State.IDLE and loop.guard.post_valid and self.post_day == self.today():
            self._go(State.READY)
        tr = self.treatment
        if tr is None or self.state not in TREATING | {State.RAMP_DOWN}:
            return
        self._account(tr, dt)
        ls = loop.state
        if self.state == State.RAMP_DOWN:
            if ls == OutputState.OFF:
                self._end_treatment(tr.end_reason)
                self._go(State.FINISHED)
            return
        if self.state == State.PAUSED:
            return
        if ls == OutputState.OFF and self.state in (
            State.CONTACT_CHECK,
            State.RAMP_UP,
            State.RUNNING,
        ):
            # The loop ended the output by itself: lifted longer than limits.lifted_max_s. The
            # treatment pauses; only an explicit resume (by the lease holder) goes on.
            self._go(State.PAUSED)
            self.emit("paused", {"reason": "contact lost for too long"})
            return
        if ls == OutputState.LIFTED:
            self._go(State.CONTACT_CHECK)
            tr.contact_good_s = 0.0
            return
        if self.state == State.CONTACT_CHECK:
            if not tr.started_ramp:
                if ls == OutputState.ON and loop.contact:
                    tr.contact_good_s += dt
                if tr.contact_good_s >= CONTACT_CONFIRM_S:
                    tr.started_ramp = True
                    loop.set_target(self._ua(tr.level, tr.step))
                    self._go(State.RAMP_UP)
            elif ls in (OutputState.RAMP_UP, OutputState.ON):
                self._go(State.RAMP_UP)
            return
        if self.state == State.RAMP_UP and ls == OutputState.ON:
            self._go(State.RUNNING)
        # Timers: they run while current flows (ramp-up included), never while lifted or paused.
        if ls in (OutputState.RAMP_UP, OutputState.ON) and tr.started_ramp:
            tr.step_elapsed_s += dt
            tr.active_s += dt
            if tr.step_elapsed_s >= tr.next_cue_s:
                tr.next_cue_s += tr.step.relocate_cue_s
                self._cue("relocate", tr)
            # The limit counts real output time (what the history adds up), not the step timer.
            if sum(z.active_s for z in tr.zones.values()) >= tr.max_active_s:
                self.emit("limit", {"reason": "daily or maximum treatment time reached"})
                self.stop("stopped")
                return
            if tr.step_elapsed_s >= tr.step.duration_s:
                self._next_step(tr)

    def _next_step(self, tr: Treatment) -> None:
        if tr.step_index + 1 >= len(tr.program.steps):
            self.stop("finished")
            return
        tr.step_index += 1
        tr.step_elapsed_s = 0.0
        step = tr.step
        tr.next_cue_s = step.relocate_cue_s or float("inf")
        self.loop.set_waveform(self._spec(step))
        self.loop.set_target(self._ua(tr.level, step))  # the new step's cap applies at once
        self._cue("next_zone", tr)

    def _cue(self, kind: str, tr: Treatment) -> None:
        self.loop.board.lines.buzzer.on()
        self._beep_off_at = self.clock() + CUE_BEEP_S
        self.emit(
            "cue", {"kind": kind, "zone": tr.step.zone, "step": tr.step_index, "text": tr.step.text}
        )

    def _account(self, tr: Treatment, dt: float) -> None:
        snap = self.loop.snapshot
        last = self._last_snap
        self._last_snap = snap
        if snap is None or last is None:
            return
        z = tr.zones.setdefault(tr.step.zone, ZoneDose())
        dq = max(0.0, snap.charge_uc - last.charge_uc)
        z.charge_uc += dq
        z.net_uc += snap.net_charge_uc - last.net_charge_uc
        z.active_s += max(0.0, snap.active_s - last.active_s)
        z.peak_ua = max(z.peak_ua, snap.peak_ua if dq else 0.0)
        if snap.state in (OutputState.ON, OutputState.RAMP_UP):
            z.quality_sum += snap.contact_quality_pct
            z.quality_n += 1
        now = self.clock()
        if tr.treatment_id is not None and now - tr.last_checkpoint_s >= CHECKPOINT_S:
            tr.last_checkpoint_s = now
            fut = self.recorder.checkpoint(tr.treatment_id, self.summary(), self._zones(tr))
            self._writes.append(
                _Write("checkpoint", tr.treatment_id, fut, now + CHECKPOINT_S, z_total(tr))
            )

    def _check_writes(self, now: float) -> None:
        """Every record write must answer OK within CHECKPOINT_S; else the treatment stops."""
        keep = []
        for w in self._writes:
            if w.fut.done():
                e = w.fut.exception()
                if e is not None:
                    self._record_failed(w, f"{type(e).__name__}: {e}")
            elif now > w.deadline_s:
                self._record_failed(w, f"no answer within {CHECKPOINT_S:.0f} s")
            else:
                keep.append(w)
        self._writes = keep
        if self._orphans:
            left = []
            for fut in self._orphans:
                if not fut.done():
                    left.append(fut)
                elif fut.exception() is None:  # begun, never used: close it at zero
                    self.recorder.finish(fut.result(), "stopped", dict(_ZERO_SUMMARY), {}, None)
            self._orphans = left

    def _record_failed(self, w: _Write, why: str) -> None:
        msg = f"the {w.what} of treatment {w.treatment_id} could not be recorded ({why})"
        log.error("RECORD_FAILED %s", msg)
        tr = self.treatment
        if w.what == "finish":
            # Not stored: count it against today's limit anyway (the history has not got it).
            day = self.today()
            self._unrecorded_s[day] = self._unrecorded_s.get(day, 0.0) + w.active_s
        stopping = tr is not None and tr.treatment_id == w.treatment_id and self.state in TREATING
        self.emit(
            "record_failed",
            {"what": w.what, "treatment_id": w.treatment_id, "reason": why, "stopping": stopping},
        )
        self.recorder.event("record", "RECORD_FAILED", msg, w.treatment_id)
        if stopping:
            # A treatment that cannot be recorded is not counted against the daily limit: end it.
            tr.end_reason, tr.end_code = "fault", "RECORD_FAILED"
            self.loop.stop()
            self._go(State.RAMP_DOWN)

    def _zones(self, tr: Treatment) -> dict:
        return {name: z.as_dict() for name, z in tr.zones.items()}

    def summary(self) -> dict:
        tr = self.treatment
        if tr is None:
            return {}
        snap = self.loop.snapshot
        active = sum(z.active_s for z in tr.zones.values())
        charge = sum(z.charge_uc for z in tr.zones.values())
        qn = sum(z.quality_n for z in tr.zones.values())
        return {
            "active_s": active,
            "charge_uc": charge,
            "net_dc_charge_uc": snap.net_charge_uc if snap else 0.0,
            "mean_current_ua": charge / active if active > 0 else 0.0,
            "peak_current_ua": max((z.peak_ua for z in tr.zones.values()), default=0.0),
            "contact_quality_pct": (
                sum(z.quality_sum for z in tr.zones.values()) / qn if qn else 0.0
            ),
        }

    def _end_treatment(self, reason: str, fault=None) -> None:
        tr = self.treatment
        if tr is None:
            return
        summary = self.summary()
        fault = fault or self.loop.guard.fault
        code = str(fault.code) if fault and reason in ("fault", "estop") else tr.end_code
        if tr.treatment_id is not None:
            fut = self.recorder.finish(tr.treatment_id, reason, summary, self._zones(tr), code)
            self._writes.append(
                _Write("finish", tr.treatment_id, fut, self.clock() + CHECKPOINT_S, z_total(tr))
            )
        self.last_summary = {
            **summary,
            "program": tr.program.id,
            "end_reason": reason,
            "treatment_id": tr.treatment_id,
            "zones": self._zones(tr),
        }
        self.emit("treatment_finished", self.last_summary)
        self.treatment = None

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        snap = self.loop.snapshot
        tr = self.treatment
        guard = self.loop.guard
        fault = guard.fault
        out = {
            "state": str(self.state),
            "output": str(self.loop.state),  # live, not the snapshot (which lags up to 5 ms)
            "program": tr.program.id if tr else None,
            "program_name": tr.program.name if tr else None,
            "step": tr.step_index if tr else None,
            "steps": len(tr.program.steps) if tr else None,
            "zone": tr.step.zone if tr else None,
            "motion": tr.step.motion if tr else None,
            "text": tr.step.text if tr else None,
            "step_left_s": max(0.0, tr.step.duration_s - tr.step_elapsed_s) if tr else None,
            "total_left_s": tr.total_left_s if tr else None,
            "level": min(tr.level, tr.step.max_level) if tr else None,
            "level_max": tr.step.max_level if tr else None,
            "setpoint_ua": snap.amplitude_ua if snap else 0.0,
            "measured_ua": snap.measured_ua if snap else 0.0,
            "impedance_ohm": snap.impedance_ohm if snap else None,
            "contact": snap.contact if snap else False,
            "contact_quality_pct": snap.contact_quality_pct if snap else 0.0,
            "charge_uc": snap.charge_uc if snap and tr else 0.0,
            "net_dc_charge_uc": snap.net_charge_uc if snap and tr else 0.0,
            "fault": fault.as_dict() if fault else None,
            # Current flowing with the output off or tripped (a welded relay and a stage fault):
            # the alarm tells the person to take the electrodes off; show it before the fault.
            "residual_ua": snap.residual_ua if snap else 0.0,
            "alarm": guard.alarm.as_dict() if guard.alarm else None,
            "post": {
                "valid": guard.post_valid,
                "passed": (self.loop.post_result or {}).get("passed"),
                "failed_step": (self.loop.post_result or {}).get("failed_step"),
            },
            "last_summary": self.last_summary if self.state == State.FINISHED else None,
            # The real-time loop's own health: ticks run, ticks that overran their period, and
            # the worst gap between two ticks since it started (a service engineer's figure).
            "loop": {
                "ticks": snap.ticks if snap else 0,
                "overruns": snap.overruns if snap else 0,
                "gap_max_ms": round(snap.gap_max_ms, 3) if snap else 0.0,
                # Every tick since start: [[bin's lower edge in us, count], ...]
                # (hw.control.tickhist), start lateness and gap between starts; subtract two
                # readings for a window.
                "late_us_hist": sparse(snap.late_hist) if snap else [],
                "gap_us_hist": sparse(snap.gap_hist) if snap else [],
            },
        }
        return out


def z_total(tr: Treatment) -> float:
    """The treatment's real output time so far (s), as the history adds it up."""
    return sum(z.active_s for z in tr.zones.values())
