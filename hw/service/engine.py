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

from hw.config import Config, Step
from hw.control.levels import level_to_ua
from hw.control.loop import CommandRefused, ControlLoop, OutputState
from hw.control.waveform import WaveformSpec
from hw.safety import Fault
from hw.service import records, starting
from hw.service.engine_status import status_dict
from hw.service.records import CHECKPOINT_S, RecordWrite
from hw.service.starting import OUTPUT_MARGIN_S, START_TIMEOUT_S, PendingStart
from hw.service.states import TREATING, EngineRefused, Recorder, State
from hw.service.treatment import Treatment, add_dose, summarize, z_total, zones_dict

# Other code imports these from here (their homes: hw/service/states.py, starting.py,
# records.py).
__all__ = [
    "CHECKPOINT_S",
    "CONTACT_CONFIRM_S",
    "OUTPUT_MARGIN_S",
    "START_TIMEOUT_S",
    "TRANSITIONS_KEPT",
    "TREATING",
    "Engine",
    "EngineRefused",
    "Recorder",
    "State",
]

log = logging.getLogger("hw")

CONTACT_CONFIRM_S = 0.5
CUE_BEEP_S = 0.08
TRANSITIONS_KEPT = 1000


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
        require_screening: bool = True,
    ):
        self.cfg = cfg
        # No start without a passed contraindication check on record (hw/service/starting.py);
        # only the simulated board's daemon (desktop, tests, benches) lets a start go on with none.
        self.require_screening = require_screening
        self.loop = loop
        self.recorder = recorder
        self.clock = clock
        self.today = today
        self.emit = emit or (lambda name, data: None)
        self.state = State.IDLE
        self.treatment: Treatment | None = None
        self.last_summary: dict | None = None
        self.post_day: _dt.date | None = None
        self._starting: PendingStart | None = None  # (hw/service/starting.py)
        self._writes: list[RecordWrite] = []  # (hw/service/records.py)
        self._orphans: list[Future] = []  # begun records whose start was given up
        self._unrecorded_s: dict[_dt.date, float] = {}  # output time history failed to store
        self._last_t = clock()
        self._last_snap = None
        self._beep_off_at: float | None = None
        # The buzzer's cues (a preference, set_sound): off, a cue is still emitted for the screen.
        self.sound = True
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
        """Ask for a treatment (hw.service.starting.start: the future of the state it reached,
        or EngineRefused; raises EngineRefused when the answer is known at once)."""
        return starting.start(self, program_id, level)

    def contraindicated(self) -> None:
        """A check that answered yes is being recorded: a start under way is refused and a
        treatment ends now (the ramp-down of a stop), whatever was read before."""
        if self._starting is not None:
            starting.refuse(self, "the contraindication check just recorded answered yes")
        if self.state in TREATING and self.treatment is not None:
            self.stop("stopped")

    def cancel_pending_start(self) -> None:
        """The client that asked for a start is gone: don't start (nor wait for the history)."""
        starting.refuse(self, "the client that asked for the start is gone")

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
            starting.refuse(self, "stopped before the output came on")
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
        records.check(self, now)
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
                starting.refuse(
                    self,
                    f"a fault is latched ({code or 'being cut'}); acknowledge it first",
                    back=False,
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
                    starting.advance(self)  # a start that waited for the self-test
            return
        if self.state == State.STARTING:
            starting.advance(self)
            return
        if self.state == State.IDLE and loop.guard.post_valid and self.post_day == self.today():
            self._go(State.READY)
        tr = self.treatment
        if tr is None or self.state not in TREATING | {State.RAMP_DOWN}:
            return
        out_dt = self._account(tr)
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
        # Timers: they run while current flows (ramp-up included), never while lifted or paused,
        # and count the output time the loop measured (what the history records), not this
        # process's clock: on --sim-time a host pause slows the loop's time, not the service's.
        if ls in (OutputState.RAMP_UP, OutputState.ON) and tr.started_ramp:
            tr.step_elapsed_s += out_dt
            tr.active_s += out_dt
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

    def set_sound(self, on: bool) -> bool:
        """The buzzer's relocate/next-zone cues on or off (kept until the daemon restarts)."""
        self.sound = bool(on)
        if not self.sound and self._beep_off_at is not None:
            self.loop.board.lines.buzzer.off()
            self._beep_off_at = None
        return self.sound

    def _cue(self, kind: str, tr: Treatment) -> None:
        if self.sound:
            self.loop.board.lines.buzzer.on()
            self._beep_off_at = self.clock() + CUE_BEEP_S
        self.emit(
            "cue", {"kind": kind, "zone": tr.step.zone, "step": tr.step_index, "text": tr.step.text}
        )

    def _account(self, tr: Treatment) -> float:
        """Add the loop's latest figures to the treatment; return the output time (s) the loop
        measured since the previous call."""
        snap = self.loop.snapshot
        last = self._last_snap
        self._last_snap = snap
        if snap is None or last is None:
            return 0.0
        out_dt = add_dose(tr, last, snap)
        now = self.clock()
        if tr.treatment_id is not None and now - tr.last_checkpoint_s >= CHECKPOINT_S:
            tr.last_checkpoint_s = now
            fut = self.recorder.checkpoint(tr.treatment_id, self.summary(), zones_dict(tr))
            self._writes.append(
                RecordWrite("checkpoint", tr.treatment_id, fut, now + CHECKPOINT_S, z_total(tr))
            )
        return out_dt

    def summary(self) -> dict:
        """The running treatment's figures so far (hw.service.treatment.summarize); {} if none."""
        tr = self.treatment
        return {} if tr is None else summarize(tr, self.loop.snapshot)

    def _end_treatment(self, reason: str, fault=None) -> None:
        tr = self.treatment
        if tr is None:
            return
        summary = self.summary()
        fault = fault or self.loop.guard.fault
        code = str(fault.code) if fault and reason in ("fault", "estop") else tr.end_code
        if tr.treatment_id is not None:
            fut = self.recorder.finish(tr.treatment_id, reason, summary, zones_dict(tr), code)
            self._writes.append(
                RecordWrite(
                    "finish", tr.treatment_id, fut, self.clock() + CHECKPOINT_S, z_total(tr)
                )
            )
        self.last_summary = {
            **summary,
            "program": tr.program.id,
            "end_reason": reason,
            "treatment_id": tr.treatment_id,
            "zones": zones_dict(tr),
        }
        self.emit("treatment_finished", self.last_summary)
        self.treatment = None

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """The ``status`` reply's fields (hw.service.engine_status, docs/protocol.md)."""
        finished = self.state == State.FINISHED
        return status_dict(
            str(self.state), self.loop, self.treatment, self.last_summary if finished else None
        )
