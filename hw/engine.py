"""The treatment engine: programs become steps, levels and setpoints; an explicit state machine.

States and what moves between them (every other transition is refused)::

    idle --self_test--> self_test --pass--> ready --start--> contact_check
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
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from hw.config import Config, Program, Step
from hw.levels import level_to_ua
from hw.loop import CommandRefused, ControlLoop, OutputState
from hw.safety import Fault
from hw.waveform import WaveformSpec


class State(StrEnum):
    IDLE = "idle"
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
CHECKPOINT_S = 5.0


class Recorder(Protocol):
    """Where the engine records (the daemon's history worker; a fake in tests)."""

    def begin(self, program_id: str, program_name: str) -> int | None: ...

    def checkpoint(self, treatment_id: int, summary: dict, zones: dict) -> None: ...

    def finish(
        self, treatment_id: int, reason: str, summary: dict, zones: dict, fault_code: str | None
    ) -> None: ...

    def event(
        self, kind: str, code: str, message: str, treatment_id: int | None = None
    ) -> None: ...

    def active_s_today(self) -> float: ...


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

    @property
    def step(self) -> Step:
        return self.program.steps[self.step_index]

    @property
    def total_left_s(self) -> float:
        rest = sum(s.duration_s for s in self.program.steps[self.step_index + 1 :])
        return max(0.0, self.step.duration_s - self.step_elapsed_s) + rest


class EngineRefused(Exception):
    """A request the engine cannot carry out now (the message says why)."""


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
        self._pending_start: tuple[str, int] | None = None
        self._last_t = clock()
        self._last_snap = None
        self._beep_off_at: float | None = None
        self._events_seen = 0
        self.transitions: list[tuple[State, State]] = []
        loop.add_event_listener(self._loop_event)
        self._loop_events: list[tuple[float, str, dict]] = []

    # ------------------------------------------------------------------ helpers
    def _go(self, new: State) -> None:
        if new != self.state:
            self.transitions.append((self.state, new))
            old, self.state = self.state, new
            self.emit("state", {"from": str(old), "to": str(new)})

    def _loop_event(self, t: float, kind: str, data: dict) -> None:
        # Called on the loop thread: only queue (list.append is atomic).
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

    def start(self, program_id: str, level: int | None = None) -> None:
        if self.state not in (State.IDLE, State.READY, State.FINISHED):
            raise EngineRefused(f"a treatment cannot start now (the device is {self.state})")
        try:
            program = self.cfg.program(program_id)
        except KeyError:
            raise EngineRefused(f"no program {program_id!r}") from None
        level = 1 if level is None else level
        if not 1 <= level <= self.cfg.limits.level_count:
            raise EngineRefused(f"level must be 1..{self.cfg.limits.level_count}")
        used = self.recorder.active_s_today()
        left = self.cfg.limits.daily_max_s - used
        if left < 10.0:
            raise EngineRefused(
                f"today's treatment time ({self.cfg.limits.daily_max_s / 60:.0f} min) is used up"
            )
        if self._post_needed():
            # The first treatment of a day, and any after a fault, is preceded by a self-test.
            try:
                self.loop.run_post()
            except CommandRefused as e:
                raise EngineRefused(str(e)) from None
            self._pending_start = (program_id, level)
            self._go(State.SELF_TEST)
            return
        self._begin(program, level, left)

    def _begin(self, program: Program, level: int, daily_left_s: float) -> None:
        step = program.steps[0]
        blocker = self.loop.start_blocker()
        if blocker:
            raise EngineRefused(blocker)
        max_active = min(self.cfg.limits.max_output_s, daily_left_s)
        # Every treatment starts at level 1; the asked level is reached after contact is found.
        self.loop.start(
            self._spec(step),
            self._ua(1, step),
            max_output_s=min(self.cfg.limits.max_output_s, max_active + 5.0),
        )
        tid = self.recorder.begin(program.id, program.name)
        self.treatment = Treatment(program, level, max_active, tid)
        self.treatment.next_cue_s = step.relocate_cue_s or float("inf")
        self.last_summary = None
        self._last_snap = None
        self._go(State.CONTACT_CHECK)
        self.emit("treatment_started", {"program": program.id, "treatment_id": tid})

    def cancel_pending_start(self) -> None:
        """The client that asked for a start is gone: don't start when the self-test ends."""
        self._pending_start = None

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
        left = tr.max_active_s - tr.active_s
        self.loop.start(
            self._spec(tr.step),
            self._ua(tr.level, tr.step),
            max_output_s=min(self.cfg.limits.max_output_s, left + 5.0),
        )
        tr.started_ramp = True
        self._go(State.RAMP_UP)

    def stop(self, reason: str = "stopped") -> None:
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
        """Advance timers and states. Called at ~50 Hz on the service thread."""
        now = self.clock()
        dt = max(0.0, now - self._last_t)
        self._last_t = now
        loop = self.loop
        while self._loop_events:
            t, kind, data = self._loop_events.pop(0)
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
                self._pending_start = None
                self._go(State.FAULT)
            return
        if self.state == State.FAULT:
            return  # acknowledged elsewhere moves it on
        if self.state == State.SELF_TEST:
            if loop.state != OutputState.POST and loop.post_result is not None:
                if loop.post_result["passed"]:
                    self.post_day = self.today()
                    self._go(State.READY)
                    if self._pending_start:
                        pid, level = self._pending_start
                        self._pending_start = None
                        try:
                            left = self.cfg.limits.daily_max_s - self.recorder.active_s_today()
                            self._begin(self.cfg.program(pid), level, left)
                        except (EngineRefused, CommandRefused) as e:
                            self.emit("start_refused", {"reason": str(e)})
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
        if tr.treatment_id is not None and self.clock() - tr.last_checkpoint_s >= CHECKPOINT_S:
            tr.last_checkpoint_s = self.clock()
            self.recorder.checkpoint(tr.treatment_id, self.summary(), self._zones(tr))

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
        code = str(fault.code) if fault and reason in ("fault", "estop") else None
        if tr.treatment_id is not None:
            self.recorder.finish(tr.treatment_id, reason, summary, self._zones(tr), code)
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
            "post": {
                "valid": guard.post_valid,
                "passed": (self.loop.post_result or {}).get("passed"),
                "failed_step": (self.loop.post_result or {}).get("failed_step"),
            },
            "last_summary": self.last_summary if self.state == State.FINISHED else None,
        }
        return out
