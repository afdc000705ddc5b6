"""The treatment engine (hw/service/engine.py) driven over a SimRig in simulated time.

The harness does what the kiosk and the daemon do: the control loop ticks at 2 kHz, the engine
ticks every 40 loop ticks (20 ms, the daemon's service period) and, while a treatment is under
way, the lease is renewed every 200 loop ticks (100 ms). The recorder is a fake that logs every
call; ``active_s_today()`` answers a number the test sets. Its answers are futures, as the history
worker's are: done at once unless a test holds them (``hold``) or makes a call fail (``fail``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from datetime import date, timedelta
from typing import NamedTuple

import pytest

from hw.config import Config, Program, load_config
from hw.control.levels import level_to_ua
from hw.control.loop import OutputState
from hw.hal.sim.rig import SimRig
from hw.safety import Fault
from hw.service.engine import (
    CHECKPOINT_S,
    CONTACT_CONFIRM_S,
    OUTPUT_MARGIN_S,
    START_TIMEOUT_S,
    TRANSITIONS_KEPT,
    TREATING,
    Engine,
    EngineRefused,
    State,
)
from hw.service.protocol import SCREENING_QUESTIONS

DAY = date(2026, 11, 25)
ENGINE_EVERY = 40  # loop ticks per engine tick (20 ms at 2 kHz)
LEASE_EVERY = 200  # loop ticks per lease renewal (100 ms)
ENGINE_TICK_S = 0.02
EPS = 1e-6
# The daemon keeps the lease while the engine is in one of these states (hw/service/commands.py
# LEASED).
LEASED = TREATING | {State.RAMP_DOWN, State.SELF_TEST, State.STARTING}

S = State
# Every edge the module docstring's diagram allows.
DIAGRAM: frozenset[tuple[State, State]] = frozenset(
    {
        (S.IDLE, S.SELF_TEST),  # idle --self_test--> self_test
        (S.SELF_TEST, S.READY),  # self_test --pass--> ready
        (S.READY, S.CONTACT_CHECK),  # ready --start--> contact_check
        (S.CONTACT_CHECK, S.RAMP_UP),  # contact good 0.5 s / skin again
        (S.RAMP_UP, S.RUNNING),  # level reached
        (S.RUNNING, S.RAMP_UP),  # running --level change--> ramp_up
        (S.RUNNING, S.CONTACT_CHECK),  # lift-off
        (S.RAMP_UP, S.CONTACT_CHECK),  # lift-off
        (S.RUNNING, S.PAUSED),
        (S.RAMP_UP, S.PAUSED),
        (S.CONTACT_CHECK, S.PAUSED),
        (S.PAUSED, S.RAMP_UP),  # resume
        # "running/... --stop or program end or daily limit--> ramp_down" (stop works in every
        # treating state)
        *((s, S.RAMP_DOWN) for s in TREATING),
        (S.RAMP_DOWN, S.FINISHED),
        *((s, S.FAULT) for s in State if s != S.FAULT),  # any --trip--> fault
        (S.FAULT, S.IDLE),  # acknowledge
        (S.FINISHED, S.CONTACT_CHECK),  # finished --start--> contact_check
        # "idle/ready/finished --start--> starting --history answered--> contact_check (or
        # self_test)"; "starting --history failed, timeout, stop--> back where it came from"
        *((s, S.STARTING) for s in (S.IDLE, S.READY, S.FINISHED)),
        *((S.STARTING, s) for s in (S.CONTACT_CHECK, S.SELF_TEST, S.IDLE, S.READY, S.FINISHED)),
        # "(a new self-test runs before output)" and the first start of a day: a start (or the
        # self-test command) from a resting state goes through the self-test.
        (S.READY, S.SELF_TEST),
        (S.FINISHED, S.SELF_TEST),
    }
)


# ---------------------------------------------------------------------------------- harness
ALL_NO = {q: False for q in SCREENING_QUESTIONS}


class FakeRecorder:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.calls: list[tuple] = []
        self.used_s = 0.0
        # The latest contraindication check on record: a passed one, as on a set-up device.
        self.screening: dict | None = {"passed": True, "t": "x", "answers": dict(ALL_NO)}
        self._next_id = 1
        self.fail: dict[str, BaseException] = {}  # call name -> the error its future carries
        self.hold: set[str] = set()  # call names whose futures stay pending
        self.held: list[tuple[str, Future, object]] = []  # (name, future, the answer it will get)

    def _answer(self, name: str, value=None) -> Future:
        fut: Future = Future()
        if name in self.hold:
            self.held.append((name, fut, value))
        elif name in self.fail:
            fut.set_exception(self.fail[name])
        else:
            fut.set_result(value)
        return fut

    def release(self) -> None:
        """Answer every held call (with its error if ``fail`` names it now)."""
        held, self.held = self.held, []
        for name, fut, value in held:
            if name in self.fail:
                fut.set_exception(self.fail[name])
            else:
                fut.set_result(value)

    def begin(self, program_id: str, program_name: str) -> Future:
        tid = self._next_id
        self._next_id += 1
        self.calls.append(("begin", self.clock(), tid, program_id, program_name))
        return self._answer("begin", tid)

    def checkpoint(self, treatment_id: int, summary: dict, zones: dict) -> Future:
        self.calls.append(("checkpoint", self.clock(), treatment_id, dict(summary), dict(zones)))
        return self._answer("checkpoint")

    def finish(self, treatment_id, reason, summary, zones, fault_code) -> Future:
        self.calls.append(
            ("finish", self.clock(), treatment_id, reason, dict(summary), dict(zones), fault_code)
        )
        return self._answer("finish")

    def event(self, kind, code, message, treatment_id=None) -> None:
        self.calls.append(("event", self.clock(), kind, code, message, treatment_id))

    def active_s_today(self) -> Future:
        return self._answer("active_s_today", self.used_s)

    def last_screening(self) -> Future:
        return self._answer("last_screening", self.screening)

    def of(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]

    def events(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == "event" and c[2] == kind]


class Emit(NamedTuple):
    t: float
    name: str
    data: dict
    step_elapsed_s: float | None  # of the treatment at the moment of the emit
    active_s: float | None


class Kiosk:
    """SimRig + Engine + fake recorder, stepped like the daemon and the kiosk step them."""

    def __init__(self, cfg: Config | None = None):
        self.rig = SimRig(cfg, seed=1)
        self.rig.sim.set_skin("normal")
        self.cfg = self.rig.cfg
        self.loop = self.rig.loop
        self.day = DAY
        self.rec = FakeRecorder(self.rig.clock.now)
        self.emits: list[Emit] = []
        self.n = 0
        # (opt-in) an engine tick that raises ends the engine's ticks, as it ends the daemon's
        # asyncio task; the kiosk keeps renewing the lease.
        self.catch_engine_errors = False
        self.engine_error: BaseException | None = None
        self.engine = Engine(
            self.cfg,
            self.loop,
            self.rec,
            self.rig.clock.now,
            today=lambda: self.day,
            emit=self._emit,
        )

    def _emit(self, name: str, data: dict) -> None:
        tr = self.engine.treatment
        self.emits.append(
            Emit(
                self.rig.clock.now(),
                name,
                data,
                tr.step_elapsed_s if tr else None,
                tr.active_s if tr else None,
            )
        )

    def now(self) -> float:
        return self.rig.clock.now()

    def step(self) -> None:
        self.rig.step()
        self.n += 1
        if self.n % LEASE_EVERY == 0 and self.engine.state in LEASED:
            self.loop.renew_lease()
        if self.n % ENGINE_EVERY == 0 and self.engine_error is None:
            if not self.catch_engine_errors:
                self.engine.tick()
                return
            try:
                self.engine.tick()
            except Exception as e:  # noqa: BLE001 - the "task" dies with it
                self.engine_error = e

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / self.rig.tick_s)):
            self.step()

    def run_until(self, pred: Callable[[], bool], timeout_s: float) -> bool:
        """Step until ``pred()`` holds after an engine tick."""
        for _ in range(round(timeout_s / self.rig.tick_s)):
            self.step()
            if self.n % ENGINE_EVERY == 0 and pred():
                return True
        return False

    def wait_for(self, state: State, timeout_s: float) -> None:
        ok = self.run_until(lambda: self.engine.state == state, timeout_s)
        assert ok, (
            f"not {state} after {timeout_s} s: {self.engine.state}, loop {self.loop.state}, "
            f"fault {self.loop.guard.fault}"
        )

    def emitted(self, name: str) -> list[Emit]:
        return [e for e in self.emits if e.name == name]

    def close(self) -> None:
        self.rig.on_tick = None
        # Let a self-test under way end: its generator touches the lines when it is dropped.
        self.rig.run_until(lambda: self.loop.state != OutputState.POST, 1.0)
        self.rig.sim.clear_all()  # a held e-stop makes the button's close() wait
        self.rig.close()


@pytest.fixture
def make_kiosk():
    made: list[Kiosk] = []

    def make(cfg: Config | None = None) -> Kiosk:
        k = Kiosk(cfg)
        made.append(k)
        return k

    yield make
    for k in made:
        k.close()


def ua(cfg: Config, level: int, cap: int) -> float:
    return level_to_ua(min(level, cap), cfg.limits, cap)


def assert_diagram(engine: Engine) -> None:
    extra = [e for e in engine.transitions if e not in DIAGRAM]
    assert not extra, f"transitions outside the diagram: {extra}"


def to_ready(k: Kiosk) -> None:
    k.engine.self_test()
    k.wait_for(State.READY, 2.0)


def at_zero_command(k: Kiosk, timeout_s: float = 0.5) -> None:
    """Step to a gap of the waveform (the loop's last two commands were zero).

    A trip mid-pulse makes the loop trip ADC_STUCK again right after acknowledge (see
    test_acknowledge_after_a_trip_mid_pulse_stays_idle); tests of what comes after an
    acknowledge trip in a gap so they test the engine.
    """
    for _ in range(round(timeout_s / k.rig.tick_s)):
        if k.loop._cmd_prev == 0.0 and k.loop._cmd_prev2 == 0.0:
            return
        k.step()
    raise AssertionError("no gap in the waveform")


def to_running(k: Kiosk, program: str = "demo", level: int = 2) -> None:
    to_ready(k)
    k.engine.start(program, level)
    k.wait_for(State.RUNNING, 5.0)


def fingerprint(k: Kiosk) -> dict:
    """Everything a refused command must leave alone."""
    e, loop = k.engine, k.loop
    tr = e.treatment
    return {
        "state": e.state,
        "treatment": None if tr is None else (id(tr), dataclasses.asdict(tr)),
        "starting": e._starting,
        "post_day": e.post_day,
        "last_summary": e.last_summary,
        "transitions": list(e.transitions),
        "loop_state": loop.state,
        "loop_target": loop.target_ua,
        "loop_queued": len(loop._cmds),  # nothing may have been asked of the loop
        "fault": loop.guard.fault,
        "trip_count": loop.guard.trip_count,
        "post_valid": loop.guard.post_valid,
        "recorder": list(k.rec.calls),
        "emits": len(k.emits),
    }


# ---------------------------------------------------------------- 1. the transition table
REFUSED = None

COMMANDS: dict[str, Callable[[Engine], object]] = {
    "self_test": lambda e: e.self_test(),
    "start": lambda e: e.start("demo", 2),
    "set_level": lambda e: e.set_level(3),
    "level_up": lambda e: e.level_step(+1),
    "level_down": lambda e: e.level_step(-1),
    "pause": lambda e: e.pause(),
    "resume": lambda e: e.resume(),
    "stop": lambda e: e.stop(),
    "acknowledge": lambda e: e.acknowledge(),
    "estop": lambda e: e.estop("test"),
}


def _reach_starting(k: Kiosk) -> None:
    to_ready(k)
    k.rec.hold.add("begin")  # the history has not answered yet
    k.engine.start("demo", 2)


def _reach_contact_check(k: Kiosk) -> None:
    to_ready(k)
    k.engine.start("demo", 2)
    k.run(0.1)  # level 1 flows; contact not yet confirmed for 0.5 s


def _reach_ramp_up(k: Kiosk) -> None:
    to_ready(k)
    k.engine.start("demo", 2)
    k.wait_for(State.RAMP_UP, 2.0)


def _reach_running(k: Kiosk) -> None:
    to_running(k)
    k.run(0.1)


def _reach_paused(k: Kiosk) -> None:
    to_running(k)
    k.engine.pause()
    assert k.run_until(lambda: k.loop.state == OutputState.OFF, 2.0)


def _reach_ramp_down(k: Kiosk) -> None:
    to_running(k)
    k.engine.stop()
    k.run(0.04)  # the stop ramp takes ramp_down_s (0.4 s)


def _reach_finished(k: Kiosk) -> None:
    to_running(k)
    k.engine.stop()
    k.wait_for(State.FINISHED, 2.0)


def _reach_fault_estop(k: Kiosk) -> None:
    to_running(k)
    k.engine.estop("on-screen STOP")
    k.run(0.04)


def _reach_fault_sim(k: Kiosk) -> None:
    to_running(k)
    k.rig.sim.inject("open_circuit")
    k.wait_for(State.FAULT, 1.0)
    k.rig.sim.clear("open_circuit")  # the cause is gone; the latch stays


REACH: dict[str, tuple[State, Callable[[Kiosk], None]]] = {
    "idle": (S.IDLE, lambda k: None),
    "self_test": (S.SELF_TEST, lambda k: (k.engine.self_test(), k.step(), k.step())),
    "ready": (S.READY, to_ready),
    "starting": (S.STARTING, _reach_starting),
    "contact_check": (S.CONTACT_CHECK, _reach_contact_check),
    "ramp_up": (S.RAMP_UP, _reach_ramp_up),
    "running": (S.RUNNING, _reach_running),
    "paused": (S.PAUSED, _reach_paused),
    "ramp_down": (S.RAMP_DOWN, _reach_ramp_down),
    "finished": (S.FINISHED, _reach_finished),
    "fault_estop": (S.FAULT, _reach_fault_estop),
    "fault_sim": (S.FAULT, _reach_fault_sim),
}


def _row(**accepted) -> dict:
    row = dict.fromkeys(COMMANDS, REFUSED)
    row.update(accepted)
    return row


_TREATING_ROW = {
    "set_level": "same",
    "level_up": "same",
    "level_down": "same",
    "pause": {S.PAUSED},
    "stop": {S.RAMP_DOWN},
    "estop": {S.FAULT},
}
# The state right after an accepted command (after one more engine tick for estop); "same" means
# the state does not change. Everything else must raise EngineRefused and change nothing.
TABLE: dict[str, dict] = {
    "idle": _row(self_test={S.SELF_TEST}, start={S.SELF_TEST}, estop={S.FAULT}),
    "self_test": _row(estop={S.FAULT}),
    "ready": _row(self_test={S.SELF_TEST}, start={S.CONTACT_CHECK}, estop={S.FAULT}),
    # Waiting for the history: only stop (the start is given up) and e-stop.
    "starting": _row(stop={S.READY}, estop={S.FAULT}),
    "contact_check": _row(**_TREATING_ROW),
    "ramp_up": _row(**_TREATING_ROW),
    # A level change while running makes the loop ramp again (ramp_up until it is reached).
    "running": _row(
        **{
            **_TREATING_ROW,
            "set_level": {S.RUNNING, S.RAMP_UP},
            "level_up": {S.RUNNING, S.RAMP_UP},
            "level_down": {S.RUNNING, S.RAMP_UP},
        }
    ),
    "paused": _row(
        set_level="same",
        level_up="same",
        level_down="same",
        resume={S.RAMP_UP},
        stop={S.RAMP_DOWN},
        estop={S.FAULT},
    ),
    "ramp_down": _row(estop={S.FAULT}),
    "finished": _row(self_test={S.SELF_TEST}, start={S.CONTACT_CHECK}, estop={S.FAULT}),
    "fault_estop": _row(acknowledge={S.IDLE}, estop={S.FAULT}),
    "fault_sim": _row(acknowledge={S.IDLE}, estop={S.FAULT}),
}


def test_table_covers_every_state_and_command():
    assert {s for s, _ in REACH.values()} == set(State)
    for where, row in TABLE.items():
        assert set(row) == set(COMMANDS), where
    assert set(TABLE) == set(REACH)


@pytest.mark.parametrize("where", list(REACH))
def test_refused_commands_change_nothing(make_kiosk, where):
    state, reach = REACH[where]
    k = make_kiosk()
    reach(k)
    assert k.engine.state == state
    for cmd, expect in TABLE[where].items():
        if expect is not REFUSED:
            continue
        before = fingerprint(k)
        with pytest.raises(EngineRefused):
            COMMANDS[cmd](k.engine)
        assert fingerprint(k) == before, f"{cmd} in {where} was refused but changed something"
    # Bad arguments to otherwise acceptable commands are refused the same way.
    if where in ("ready", "finished"):
        for bad in (
            lambda e: e.start("no-such-program"),
            lambda e: e.start("demo", 0),
            lambda e: e.start("demo", k.cfg.limits.level_count + 1),
        ):
            before = fingerprint(k)
            with pytest.raises(EngineRefused):
                bad(k.engine)
            assert fingerprint(k) == before
    if where in ("contact_check", "ramp_up", "running", "paused"):
        cap = k.engine.treatment.step.max_level
        for level in (0, cap + 1):
            before = fingerprint(k)
            with pytest.raises(EngineRefused):
                k.engine.set_level(level)
            assert fingerprint(k) == before


def _accepted_cases():
    for where, row in TABLE.items():
        for cmd, expect in row.items():
            if expect is REFUSED:
                continue
            yield pytest.param(where, cmd, id=f"{where}-{cmd}")


@pytest.mark.parametrize("where,cmd", list(_accepted_cases()))
def test_accepted_command_makes_documented_transition(make_kiosk, where, cmd):
    state, reach = REACH[where]
    k = make_kiosk()
    reach(k)
    e = k.engine
    assert e.state == state
    expect = TABLE[where][cmd]
    expect = {state} if expect == "same" else expect
    fault_before = k.loop.guard.fault
    finishes_before = len(k.rec.of("finish"))
    had_treatment = e.treatment is not None

    result = COMMANDS[cmd](e)
    if cmd == "estop":
        k.run(0.04)
    assert e.state in expect, (where, cmd, e.state)

    # The command did what it is for.
    if cmd in ("set_level", "level_up"):
        assert result == 3 and e.treatment.level == 3
    elif cmd == "level_down":
        assert result == 1 and e.treatment.level == 1
    elif cmd == "pause":
        assert k.run_until(lambda: k.loop.state == OutputState.OFF, 2.0)
        assert e.state == S.PAUSED
    elif cmd == "resume":
        k.wait_for(S.RUNNING, 3.0)
    elif cmd == "stop" and where == "starting":
        k.rec.release()  # the record's id comes after the start was given up: it is closed
        k.run(0.1)
        assert e.state == S.READY and k.loop.state == OutputState.OFF
        assert [f[2:4] for f in k.rec.of("finish")] == [(k.rec.of("begin")[-1][2], "stopped")]
    elif cmd == "stop":
        k.wait_for(S.FINISHED, 2.0)
        assert k.rec.of("finish")[-1][3] == "stopped"
    elif cmd == "start":
        k.wait_for(S.CONTACT_CHECK, 2.0)
        assert k.rec.of("begin")[-1][3] == "demo"
        k.step()  # the loop applies the start on its next tick
        assert k.loop.state in (OutputState.RAMP_UP, OutputState.ON)
    elif cmd == "self_test":
        k.wait_for(S.READY, 2.0)
        assert k.loop.post_result["passed"]
    elif cmd == "acknowledge":
        assert not k.loop.guard.tripped
        assert k.rec.events("acknowledge")
    elif cmd == "estop":
        if fault_before is not None:  # already latched: the first fault stays, nothing re-ends
            assert k.loop.guard.fault == fault_before
            assert len(k.rec.of("finish")) == finishes_before
        else:
            assert k.loop.guard.fault.code == Fault.ESTOP
            if had_treatment:
                assert k.rec.of("finish")[-1][3] == "estop"
    assert_diagram(e)


def test_whole_session_stays_on_the_diagram(make_kiosk):
    """Boot, self-test, treat with a lift, a pause and an end; a fault; a start after it."""
    k = make_kiosk()
    to_running(k)
    k.rig.sim.inject("lift_off")
    k.wait_for(S.CONTACT_CHECK, 1.0)
    k.rig.sim.clear("lift_off")
    k.wait_for(S.RUNNING, 3.0)
    k.engine.pause()
    k.run(1.0)
    k.engine.resume()
    k.wait_for(S.RUNNING, 3.0)
    k.engine.stop()
    k.wait_for(S.FINISHED, 2.0)
    k.engine.start("demo", 2)
    k.wait_for(S.RUNNING, 3.0)
    at_zero_command(k)
    k.rig.sim.inject("estop")
    k.wait_for(S.FAULT, 0.5)
    k.rig.sim.clear("estop")
    k.engine.acknowledge()
    k.engine.start("demo", 2)
    k.wait_for(S.RUNNING, 5.0)
    assert_diagram(k.engine)
    seen = set(k.engine.transitions)
    assert (S.RUNNING, S.CONTACT_CHECK) in seen and (S.PAUSED, S.RAMP_UP) in seen
    assert (S.IDLE, S.SELF_TEST) in seen and (S.FAULT, S.IDLE) in seen


# --------------------------------------------------------------------------- 2. levels
def _contact_run_before_switch(trace, ua1: float) -> tuple[float, float]:
    """(first target, length of the ON-with-contact run that ended when level 1 was left)."""
    first = next(t for _, _, _, t in trace if t > 0)
    i_switch = next(i for i, (_, _, _, t) in enumerate(trace) if t > 0 and t != ua1)
    t_switch = trace[i_switch][0]
    j = i_switch - 1
    while j >= 0 and trace[j][1] == OutputState.ON and trace[j][2]:
        j -= 1
    return first, t_switch - trace[j + 1][0]


@pytest.mark.parametrize("program_id", ["demo", "quick-tone", "full-face-lift"])
def test_treatment_starts_at_level_1_then_ramps_to_capped_level(make_kiosk, program_id):
    k = make_kiosk()
    to_ready(k)
    trace: list[tuple[float, OutputState, bool, float]] = []
    k.rig.on_tick = lambda r: trace.append(
        (r.clock.now(), r.loop.state, r.loop.contact, r.loop.target_ua)
    )
    asked = k.cfg.limits.level_count  # above every step's cap
    k.engine.start(program_id, asked)
    k.wait_for(S.RUNNING, 5.0)
    step = k.cfg.program(program_id).steps[0]
    ua1 = level_to_ua(1, k.cfg.limits)
    first, good_s = _contact_run_before_switch(trace, ua1)
    assert first == ua1
    # The engine counts contact in 20 ms ticks: the first one may credit part of a tick.
    assert CONTACT_CONFIRM_S - ENGINE_TICK_S - EPS <= good_s <= CONTACT_CONFIRM_S + ENGINE_TICK_S
    assert k.loop.target_ua == ua(k.cfg, asked, step.max_level)
    assert k.engine.status()["level"] == step.max_level
    assert_diagram(k.engine)


def test_lift_during_contact_check_restarts_the_half_second(make_kiosk):
    k = make_kiosk()
    to_ready(k)
    trace: list[tuple[float, OutputState, bool, float]] = []
    k.rig.on_tick = lambda r: trace.append(
        (r.clock.now(), r.loop.state, r.loop.contact, r.loop.target_ua)
    )
    k.engine.start("demo", 3)
    assert k.run_until(lambda: k.loop.state == OutputState.ON, 1.0)
    k.run(0.3)  # 0.3 s of good contact at level 1
    k.rig.sim.inject("lift_off")
    k.run(0.5)
    assert k.engine.state == S.CONTACT_CHECK
    k.rig.sim.clear("lift_off")
    k.wait_for(S.RUNNING, 5.0)
    ua1 = level_to_ua(1, k.cfg.limits)
    first, good_s = _contact_run_before_switch(trace, ua1)
    assert first == ua1
    assert good_s >= CONTACT_CONFIRM_S - ENGINE_TICK_S - EPS


def test_set_level_above_step_cap_is_refused(make_kiosk):
    k = make_kiosk()
    to_running(k, "demo", 2)
    cap = k.engine.treatment.step.max_level
    before = fingerprint(k)
    with pytest.raises(EngineRefused):
        k.engine.set_level(cap + 1)
    assert fingerprint(k) == before
    assert k.engine.set_level(cap) == cap
    k.wait_for(S.RUNNING, 3.0)
    assert k.loop.target_ua == ua(k.cfg, cap, cap)


def test_level_step_never_wraps(make_kiosk):
    k = make_kiosk()
    to_running(k, "demo", 1)
    e = k.engine
    cap = e.treatment.step.max_level
    assert e.level_step(-1) == 1
    assert e.level_step(-1) == 1
    for want in range(2, cap + 1):
        assert e.level_step(+1) == want
    assert e.level_step(+1) == cap
    assert e.level_step(+1) == cap
    k.wait_for(S.RUNNING, 3.0)
    assert k.loop.target_ua == ua(k.cfg, cap, cap)
    assert e.level_step(-1) == cap - 1


def test_level_down_from_a_capped_asked_level_lowers_the_level(make_kiosk):
    k = make_kiosk()
    to_running(k, "demo", 10)
    cap = k.engine.treatment.step.max_level
    assert k.engine.status()["level"] == cap
    assert k.engine.level_step(-1) == cap - 1


# --------------------------------------------------------------------------- 3. timers
def test_step_time_frozen_while_paused(make_kiosk):
    k = make_kiosk()
    to_running(k)
    k.run(1.0)
    e = k.engine
    tr = e.treatment
    e.pause()
    left, elapsed, active = e.status()["step_left_s"], tr.step_elapsed_s, tr.active_s
    k.run(2.0)
    assert e.state == S.PAUSED and k.loop.state == OutputState.OFF
    assert e.status()["step_left_s"] == left
    assert (tr.step_elapsed_s, tr.active_s) == (elapsed, active)
    assert not [c for c in k.emitted("cue") if c.t > k.now() - 2.0]
    e.resume()
    k.wait_for(S.RUNNING, 3.0)
    assert tr.step_elapsed_s > elapsed


def test_step_time_not_advanced_while_lifted(make_kiosk):
    k = make_kiosk()
    to_running(k)
    tr = k.engine.treatment
    driving = [0]

    def count(r):
        if r.loop.state in (OutputState.RAMP_UP, OutputState.ON):
            driving[0] += 1

    lift_debounce_s = k.cfg.limits.lift_debounce_ms / 1000.0
    for offset in (0, 23):  # loop ticks after an engine tick at which the skin is left
        k.run(0.5)
        assert k.n % ENGINE_EVERY == 0
        driving[0] = 0
        k.rig.on_tick = count
        t0, left0 = k.now(), k.engine.status()["step_left_s"]
        for _ in range(offset):
            k.step()
        k.rig.sim.inject("lift_off")
        k.run(1.0)
        assert k.engine.state == S.CONTACT_CHECK and k.loop.state == OutputState.LIFTED
        k.rig.sim.clear("lift_off")
        k.wait_for(S.RUNNING, 3.0)
        k.run(0.2)
        k.rig.on_tick = None
        assert tr.step_index == 0
        used = left0 - k.engine.status()["step_left_s"]
        flowed = driving[0] * k.rig.tick_s
        # Step time follows the time current flowed, to an engine tick (plus the loop's lift
        # debounce, which the loop still counts as ON); the lifted second did not count.
        assert flowed - ENGINE_TICK_S - lift_debounce_s - EPS <= used <= flowed + EPS
        assert used < (k.now() - t0) - 1.0


# A short tour for the timer and dose tests: three zones, three caps, two cue periods.
TOUR = {
    "id": "test-tour",
    "name": "Test tour",
    "description": "Three short steps.",
    "steps": [
        {
            "zone": "cheeks",
            "motion": "glide",
            "duration_s": 6.0,
            "frequency_hz": 10.0,
            "pulse_width_ms": 40.0,
            "max_level": 4,
            "relocate_cue_s": 2.5,
            "text": "Cheeks.",
        },
        {
            "zone": "forehead",
            "motion": "hold",
            "duration_s": 5.0,
            "frequency_hz": 10.0,
            "pulse_width_ms": 40.0,
            "max_level": 3,
            "relocate_cue_s": 2.0,
            "text": "Forehead.",
        },
        {
            "zone": "neck",
            "motion": "glide",
            "duration_s": 5.0,
            "frequency_hz": 10.0,
            "pulse_width_ms": 40.0,
            "max_level": 5,
            "relocate_cue_s": 0.0,
            "text": "Neck.",
        },
    ],
}
TOUR_LEVEL = 5


class TourRun(NamedTuple):
    k: Kiosk
    program: Program
    targets: list[tuple[float, float]]  # (time, loop target) at every change
    t_ramp: float  # when contact was confirmed (timers start)


@pytest.fixture(scope="module")
def tour():
    base = load_config(env={})
    program = Program.model_validate(TOUR)
    cfg = base.model_copy(update={"programs": (*base.programs, program)})
    k = Kiosk(cfg)
    targets: list[tuple[float, float]] = []

    def watch(r):
        if not targets or targets[-1][1] != r.loop.target_ua:
            targets.append((r.clock.now(), r.loop.target_ua))

    try:
        to_ready(k)
        k.rig.on_tick = watch
        k.engine.start("test-tour", TOUR_LEVEL)
        k.wait_for(S.RAMP_UP, 2.0)
        t_ramp = k.now()
        k.wait_for(S.FINISHED, 25.0)
        k.run(0.2)
        k.rig.on_tick = None
        yield TourRun(k, program, targets, t_ramp)
    finally:
        k.close()


def test_program_ends_by_itself(tour):
    k = tour.k
    assert k.engine.state == S.FINISHED and k.engine.treatment is None
    assert k.loop.state == OutputState.OFF and not k.loop.guard.tripped
    assert k.engine.last_summary["end_reason"] == "finished"
    assert k.engine.status()["last_summary"]["end_reason"] == "finished"
    finishes = k.rec.of("finish")
    assert len(finishes) == 1
    _, _, tid, reason, _summary, zones, code = finishes[0]
    assert (tid, reason, code) == (k.rec.of("begin")[0][2], "finished", None)
    assert set(zones) == {s.zone for s in tour.program.steps}
    for z in zones.values():
        assert z["active_s"] > 0 and z["charge_uc"] > 0
    assert_diagram(k.engine)


def test_steps_advance_in_order_with_next_zone_cues(tour):
    k, steps = tour.k, tour.program.steps
    nz = [c for c in k.emitted("cue") if c.data["kind"] == "next_zone"]
    assert [(c.data["step"], c.data["zone"]) for c in nz] == [
        (i, s.zone) for i, s in enumerate(steps)
    ][1:]
    # With no interruption the steps last their durations, to an engine tick.
    starts = [tour.t_ramp] + [c.t for c in nz]
    for i, (a, b) in enumerate(zip(starts, starts[1:])):
        assert abs((b - a) - steps[i].duration_s) <= ENGINE_TICK_S + EPS
    # Each step's cap applies when it starts: asked TOUR_LEVEL, capped per step.
    lim = k.cfg.limits
    wanted = [level_to_ua(1, lim)] + [ua(k.cfg, TOUR_LEVEL, s.max_level) for s in steps]
    assert [t for _, t in tour.targets if t > 0] == wanted


def test_relocate_cues_every_relocate_cue_s(tour):
    k, steps = tour.k, tour.program.steps
    cues = [c for c in k.emitted("cue") if c.data["kind"] == "relocate"]
    for i, step in enumerate(steps):
        mine = [c for c in cues if c.data["step"] == i]
        if not step.relocate_cue_s:
            assert mine == []
            continue
        n = int((step.duration_s - EPS) // step.relocate_cue_s)
        assert len(mine) == n, (step.zone, len(mine))
        for j, c in enumerate(mine, start=1):
            assert c.data["zone"] == step.zone
            due = j * step.relocate_cue_s
            assert due - EPS <= c.step_elapsed_s <= due + ENGINE_TICK_S + EPS


# ------------------------------------------------------------------------ 6. dose accounting
def test_step_timers_count_the_loops_output_time_not_the_services_clock():
    """On --sim-time a host pause slows the loop's time, not the service's clock (a fresh-clone
    run recorded 11.8 s of output for the 16 s demo). The service's clock here runs 1.5 times the
    loop's: every step still lasts its duration of real output, and the record says so."""
    base = load_config(env={})
    program = Program.model_validate(TOUR)
    cfg = base.model_copy(update={"programs": (*base.programs, program)})
    k = Kiosk(cfg)
    k.engine.clock = lambda: 1.5 * k.rig.clock.now()
    k.engine._last_t = k.engine.clock()
    try:
        to_ready(k)
        k.engine.start("test-tour", TOUR_LEVEL)
        k.wait_for(S.RAMP_UP, 2.0)
        t_ramp = k.now()
        k.wait_for(S.FINISHED, 25.0)
        nz = [c.t for c in k.emitted("cue") if c.data["kind"] == "next_zone"]
        for i, (a, b) in enumerate(zip([t_ramp, *nz], nz)):
            assert abs((b - a) - program.steps[i].duration_s) <= 2 * ENGINE_TICK_S, (i, a, b)
        total = sum(s.duration_s for s in program.steps)
        summary = k.rec.of("finish")[0][4]
        # The record's output time also holds the ramp-down after the last step.
        assert total <= summary["active_s"] <= total + 1.0, summary
    finally:
        k.close()


def test_zone_charge_matches_the_loop(tour):
    k = tour.k
    s = k.engine.last_summary
    zones = s["zones"]
    loop_q = k.loop.snapshot.charge_uc
    assert loop_q > 0
    assert abs(sum(z["charge_uc"] for z in zones.values()) - loop_q) <= 0.01 * loop_q
    assert s["charge_uc"] == pytest.approx(sum(z["charge_uc"] for z in zones.values()))
    assert s["active_s"] == pytest.approx(sum(z["active_s"] for z in zones.values()))
    assert abs(s["active_s"] - k.loop.snapshot.active_s) <= 0.01 * k.loop.snapshot.active_s
    for z in [*zones.values(), s]:
        assert z["mean_current_ua"] == pytest.approx(z["charge_uc"] / z["active_s"])
        assert 0 < z["mean_current_ua"] <= z["peak_current_ua"]
    top = max(ua(k.cfg, TOUR_LEVEL, st.max_level) for st in tour.program.steps)
    assert s["peak_current_ua"] <= top * 1.2


def test_checkpoints_every_five_seconds(tour):
    k = tour.k
    cps = k.rec.of("checkpoint")
    begin_t = k.rec.of("begin")[0][1]
    end_t = k.rec.of("finish")[0][1]
    assert len(cps) >= int((end_t - begin_t) // CHECKPOINT_S)
    times = [c[1] for c in cps]
    assert times[0] - begin_t <= 2 * ENGINE_TICK_S + EPS  # the first tick only takes a snapshot
    for a, b in zip(times, times[1:]):
        assert CHECKPOINT_S - EPS <= b - a <= CHECKPOINT_S + ENGINE_TICK_S + EPS
    charges = [c[3]["charge_uc"] for c in cps]
    assert charges == sorted(charges)
    assert all(c[2] == k.rec.of("begin")[0][2] for c in cps)


# ------------------------------------------------------------------------ 4. auto-off, caps
@pytest.mark.parametrize("left_s,ok", [(9.9, False), (10.0, True)])
def test_start_refused_when_daily_time_used_up(make_kiosk, left_s, ok):
    k = make_kiosk()
    to_ready(k)
    k.rec.used_s = k.cfg.limits.daily_max_s - left_s
    if ok:
        k.engine.start("demo", 2)
        assert k.engine.state == S.CONTACT_CHECK
        return
    before = fingerprint(k)
    with pytest.raises(EngineRefused, match="used up"):
        k.engine.start("demo", 2)
    assert fingerprint(k) == before


DAY_LEFT_S = 12.0  # the demo program needs 16 s


@pytest.fixture(scope="module")
def day_runs_out():
    """A demo treatment started with 12 s of the day's output time left, run to its end."""
    k = Kiosk()
    try:
        to_ready(k)
        k.rec.used_s = k.cfg.limits.daily_max_s - DAY_LEFT_S
        k.engine.start("demo", 3)
        k.wait_for(S.FINISHED, 25.0)
        yield k
    finally:
        k.close()


def test_treatment_stops_when_the_day_runs_out(day_runs_out):
    k = day_runs_out
    limits = k.emitted("limit")
    assert len(limits) == 1
    # The limit counts real output time (the contact check at level 1 included), so the step
    # timer has run less than the day's remainder when it fires.
    assert 0 < limits[0].active_s <= DAY_LEFT_S + ENGINE_TICK_S + EPS
    assert k.engine.last_summary["end_reason"] == "stopped"  # END_REASONS has no 'limit'
    assert list(k.engine.transitions)[-2:] == [(S.RUNNING, S.RAMP_DOWN), (S.RAMP_DOWN, S.FINISHED)]
    assert not k.loop.guard.tripped and k.loop.state == OutputState.OFF
    assert len(k.rec.of("finish")) == 1


def test_daily_limit_holds_for_the_recorded_output_time(day_runs_out):
    k = day_runs_out
    recorded = k.rec.of("finish")[0][4]["active_s"]
    assert recorded <= DAY_LEFT_S + k.cfg.limits.ramp_down_s + ENGINE_TICK_S


def test_first_start_of_a_day_runs_the_self_test(make_kiosk):
    k = make_kiosk()
    to_running(k)
    assert k.engine.post_day == DAY
    k.engine.stop()
    k.wait_for(S.FINISHED, 2.0)
    # Same day: straight to the contact check.
    k.engine.start("demo", 2)
    assert k.engine.state == S.CONTACT_CHECK
    k.engine.stop()
    k.wait_for(S.FINISHED, 2.0)
    posts = len(k.rec.events("post"))
    begins = len(k.rec.of("begin"))
    k.day = DAY + timedelta(days=1)
    k.engine.start("demo", 2)
    assert k.engine.state == S.SELF_TEST and len(k.rec.of("begin")) == begins
    k.wait_for(S.CONTACT_CHECK, 2.0)
    assert list(k.engine.transitions)[-3:] == [
        (S.FINISHED, S.SELF_TEST),
        (S.SELF_TEST, S.READY),
        (S.READY, S.CONTACT_CHECK),
    ]
    assert k.engine.post_day == k.day
    assert len(k.rec.events("post")) == posts + 1 and k.rec.events("post")[-1][3] == "PASS"
    assert len(k.rec.of("begin")) == begins + 1
    k.wait_for(S.RUNNING, 3.0)
    assert_diagram(k.engine)


def test_new_day_start_waits_for_the_new_self_test(make_kiosk):
    k = make_kiosk()
    to_running(k)
    k.engine.stop()
    k.wait_for(S.FINISHED, 2.0)
    k.day = DAY + timedelta(days=1)
    k.engine.start("demo", 2)
    k.engine.tick()  # the service thread ticks before the loop's next tick
    assert k.engine.state == S.SELF_TEST
    k.wait_for(S.RUNNING, 5.0)


# --------------------------------------------------------------------------------- 5. faults
@pytest.mark.parametrize(
    "fault,code", [("open_circuit", Fault.OPEN_CIRCUIT), ("charger", Fault.CHARGER)]
)
def test_injected_fault_while_running(make_kiosk, fault, code):
    k = make_kiosk()
    to_running(k)
    tid = k.engine.treatment.treatment_id
    k.rig.sim.inject(fault)
    k.wait_for(S.FAULT, 1.0)
    assert k.loop.state == OutputState.TRIPPED and k.engine.treatment is None
    finishes = k.rec.of("finish")
    assert len(finishes) == 1
    assert (finishes[0][2], finishes[0][3], finishes[0][6]) == (tid, "fault", str(code))
    assert k.engine.last_summary["end_reason"] == "fault"
    assert [(c[3], c[5]) for c in k.rec.events("fault")] == [(str(code), tid)]
    assert [e.data["code"] for e in k.emitted("fault")] == [str(code)]
    if fault == "charger":  # the cause is checked on acknowledge
        before = fingerprint(k)
        with pytest.raises(EngineRefused, match="charger"):
            k.engine.acknowledge()
        assert fingerprint(k) == before
    k.rig.sim.clear(fault)
    k.engine.acknowledge()
    assert k.engine.state == S.IDLE
    assert_diagram(k.engine)


@pytest.mark.parametrize("how", ["button", "screen"])
def test_estop_then_acknowledge_then_self_test_before_output(make_kiosk, how):
    k = make_kiosk()
    to_running(k)
    tid = k.engine.treatment.treatment_id
    at_zero_command(k)
    if how == "button":
        k.rig.sim.inject("estop")
    else:
        k.engine.estop("on-screen STOP")
    k.wait_for(S.FAULT, 0.5)
    finishes = k.rec.of("finish")
    assert len(finishes) == 1
    assert (finishes[0][2], finishes[0][3], finishes[0][6]) == (tid, "estop", "ESTOP")
    if how == "button":
        k.run(0.5)
        before = fingerprint(k)
        with pytest.raises(EngineRefused, match="e-stop"):
            k.engine.acknowledge()
        assert fingerprint(k) == before
        k.rig.sim.clear("estop")
    k.run(0.1)
    k.engine.acknowledge()
    assert k.engine.state == S.IDLE and not k.loop.guard.tripped
    assert k.rec.events("acknowledge")[-1][3] == "ESTOP"
    k.run(0.1)
    assert k.engine.state == S.IDLE  # no self-test has passed since the fault
    posts = len(k.rec.events("post"))
    k.engine.start("demo", 2)
    assert k.engine.state == S.SELF_TEST
    k.wait_for(S.CONTACT_CHECK, 2.0)
    assert len(k.rec.events("post")) == posts + 1
    k.step()  # the loop applies the start on its next tick
    assert k.loop.target_ua == level_to_ua(1, k.cfg.limits)
    k.wait_for(S.RUNNING, 3.0)
    assert len(k.rec.of("begin")) == 2
    assert_diagram(k.engine)


def test_acknowledge_before_the_engine_saw_the_trip(make_kiosk):
    k = make_kiosk()
    to_running(k)
    k.engine.estop("on-screen STOP")
    try:
        k.engine.acknowledge()  # in the same service-thread turn, before the next engine tick
    except EngineRefused:
        pass  # refusing it would be fine
    k.run(1.0)
    finishes = k.rec.of("finish")
    assert [(f[3], f[6]) for f in finishes] == [("estop", "ESTOP")]
    assert k.loop.guard.fault is None or k.loop.guard.fault.code == Fault.ESTOP
    assert_diagram(k.engine)


def test_start_right_after_a_trip_is_refused_by_the_engine(make_kiosk):
    k = make_kiosk()
    to_ready(k)
    k.engine.estop("on-screen STOP")  # the engine still says ready until its next tick
    before = fingerprint(k)
    with pytest.raises(EngineRefused):
        k.engine.start("demo", 2)
    assert fingerprint(k) == before


def test_acknowledge_after_a_trip_mid_pulse_stays_idle(make_kiosk):
    k = make_kiosk()
    to_running(k)
    follow_min = k.cfg.limits.follow_min_ua
    assert k.run_until(lambda: abs(k.loop._cmd_prev2) >= follow_min, 0.5)
    k.rig.sim.inject("estop")
    k.wait_for(S.FAULT, 0.5)
    k.rig.sim.clear("estop")
    k.engine.acknowledge()
    k.run(0.1)
    assert k.engine.state == S.IDLE, k.loop.guard.fault
    k.engine.start("demo", 2)
    k.wait_for(S.RUNNING, 5.0)


# ------------------------------------------------- 6. supervision (issue 6, item 1): a dead engine
def _raise_in_checkpoint(k: Kiosk) -> None:
    def checkpoint(*_a, **_kw):
        raise RuntimeError("checkpoint exploded (test)")

    k.rec.checkpoint = checkpoint


def test_an_engine_that_raises_lets_the_loop_cut_the_output(make_kiosk):
    # Issue 6 item 1: one exception in the engine's periodic call (here the recorder's
    # checkpoint) ended its task; 160 uA kept flowing with the lease renewed.
    k = make_kiosk()
    k.catch_engine_errors = True
    to_running(k)
    _raise_in_checkpoint(k)
    assert k.run_until(lambda: k.engine_error is not None, CHECKPOINT_S + 1.0)
    t_dead = k.now()
    assert k.loop.state in (OutputState.RAMP_UP, OutputState.ON) and k.rig.sim.enable_high
    bound_s = k.cfg.loop.service_heartbeat_ms / 1000.0
    # The kiosk keeps renewing the lease; only the missing heartbeat can end it.
    assert k.run_until(lambda: k.loop.guard.tripped, bound_s + 0.5), k.loop.state
    fault = k.loop.guard.fault
    assert fault.code == Fault.INTERNAL and "service heartbeat lost" in fault.detail, fault
    # The last beat came with the last good tick, one engine period before the one that raised.
    assert fault.t_s - t_dead <= bound_s + k.rig.tick_s + EPS
    assert k.loop.state == OutputState.TRIPPED and not k.rig.sim.enable_high
    assert k.rig.sim.current_ua == pytest.approx(0.0, abs=5.0)


def test_the_heartbeat_bound_never_exceeds_the_lease(make_kiosk):
    cfg = load_config(env={})
    lim = cfg.limits.model_copy(update={"lease_ms": 100.0})
    k = make_kiosk(cfg.model_copy(update={"limits": lim}))
    assert cfg.loop.service_heartbeat_ms > 100.0
    assert k.loop.service_beat_max_s == pytest.approx(0.1)


def test_a_live_engine_keeps_the_output_on_and_a_ramp_down_needs_no_beat(make_kiosk):
    k = make_kiosk()
    to_running(k)
    k.run(2.0)  # 100 engine ticks, each one a beat: no trip
    assert not k.loop.guard.tripped and k.engine.state == S.RUNNING
    k.engine.stop()
    k.step()  # the loop takes the stop
    assert k.loop.state == OutputState.RAMP_DOWN
    k.catch_engine_errors = True
    k.engine_error = RuntimeError("engine gone")  # no more ticks, no more beats
    assert k.rig.run_until(lambda: k.loop.state == OutputState.OFF, 2.0)
    assert not k.loop.guard.tripped  # the ramp-down went to zero by itself, with no cut


@pytest.mark.parametrize("program_id", ["demo", "full-face-lift"])
def test_the_loop_is_bounded_by_the_program_not_the_backstop(make_kiosk, program_id):
    k = make_kiosk()
    to_ready(k)
    k.engine.start(program_id, 2)
    k.step()
    program_s = sum(st.duration_s for st in k.cfg.program(program_id).steps)
    assert k.loop.max_output_s == pytest.approx(program_s + OUTPUT_MARGIN_S)
    assert k.loop.max_output_s < k.cfg.limits.max_output_s
    # After a pause, what is left of the program (plus the margin), not the whole of it.
    k.wait_for(S.RUNNING, 3.0)
    k.run(3.0)
    k.engine.pause()
    assert k.run_until(lambda: k.loop.state == OutputState.OFF, 2.0)
    left_s = k.engine.treatment.total_left_s
    done_s = k.loop.active_s  # a resume carries the treatment's output time on
    assert done_s > 2.0
    k.engine.resume()
    k.step()
    assert k.loop.max_output_s == pytest.approx(done_s + left_s + OUTPUT_MARGIN_S)
    assert k.loop.max_output_s - done_s < program_s + OUTPUT_MARGIN_S - 2.0


def test_a_dead_engine_is_cut_at_the_programs_end_even_with_a_beat(make_kiosk):
    # The loop's own bound: with the engine's decisions gone (but something still beating),
    # output ends OUTPUT_MARGIN_S after the program would have, not after 30 minutes.
    k = make_kiosk()
    to_running(k, "demo")
    k.catch_engine_errors = True
    k.engine_error = RuntimeError("decisions stopped")
    k.rig.on_tick = lambda rig: k.loop.service_beat()
    program_s = sum(st.duration_s for st in k.cfg.program("demo").steps)
    assert k.run_until(lambda: k.loop.guard.tripped, program_s + OUTPUT_MARGIN_S + 1.0)
    assert k.loop.guard.fault.code == Fault.OUTPUT_TIME


# ------------------------------------------------- 7. fail closed (issue 6, item 8)
def _no_output_since(k: Kiosk, n_events: int) -> None:
    assert k.loop.state == OutputState.OFF and not k.rig.sim.enable_high
    assert not [e for e in list(k.loop.events)[n_events:] if e[1] == "output_on"]


def test_no_start_when_todays_time_cannot_be_read(make_kiosk):
    k = make_kiosk()
    to_ready(k)
    k.rec.fail["active_s_today"] = OSError("disk I/O error")
    n = len(k.loop.events)
    before = fingerprint(k)
    with pytest.raises(EngineRefused, match="cannot read today's treatment time"):
        k.engine.start("demo", 2)
    assert fingerprint(k) == before and not k.rec.of("begin")
    k.run(0.1)
    _no_output_since(k, n)


@pytest.mark.parametrize("yes", ["implant", "pregnancy", "under_18"])
def test_no_start_while_the_check_on_record_answered_yes(make_kiosk, yes):
    k = make_kiosk()
    to_ready(k)
    k.rec.screening = {"passed": False, "t": "x", "answers": {**ALL_NO, yes: True}}
    n = len(k.loop.events)
    before = fingerprint(k)
    with pytest.raises(EngineRefused, match=f"answered yes \\({yes}\\)"):
        k.engine.start("demo", 2)
    assert fingerprint(k) == before and not k.rec.of("begin")
    k.run(0.1)
    _no_output_since(k, n)
    # A later check with every answer no is what lets a treatment start again.
    k.rec.screening = {"passed": True, "t": "y", "answers": ALL_NO}
    assert k.engine.start("demo", 2).result(timeout=0) in ("contact_check", "self_test")


@pytest.mark.parametrize(
    "record",
    [
        {"passed": "yes", "answers": ALL_NO},  # a flag that is not true/false
        {"answers": ALL_NO},  # no verdict at all
        "garbage",  # not a record
        {"passed": True, "answers": {**ALL_NO, "implant": True}},  # the flag says no, not a yes
        {"passed": True, "answers": None},  # answers that cannot be read
        {"passed": True, "answers": {}},  # none of the questions answered
        {"passed": True, "answers": {**ALL_NO, "under_18": None}},  # one not answered no
    ],
)
def test_a_check_on_record_that_cannot_be_told_refuses(make_kiosk, record):
    k = make_kiosk()
    to_ready(k)
    k.rec.screening = record
    with pytest.raises(EngineRefused, match="answered yes"):
        k.engine.start("demo", 2)
    assert k.engine.state == S.READY and not k.rec.of("begin")


def test_no_start_when_the_check_on_record_cannot_be_read(make_kiosk):
    k = make_kiosk()
    to_ready(k)
    k.rec.fail["last_screening"] = OSError("disk I/O error")
    n = len(k.loop.events)
    with pytest.raises(EngineRefused, match="cannot read the contraindication check"):
        k.engine.start("demo", 2)
    assert k.engine.state == S.READY and not k.rec.of("begin")
    k.run(0.1)
    _no_output_since(k, n)


@pytest.mark.parametrize("required", [True, False])
def test_with_no_check_on_record_only_the_sim_daemon_lets_a_start_go_on(make_kiosk, required):
    k = make_kiosk()  # required: a real board; not: the simulated board's daemon (tools, tests)
    k.engine.require_screening = required
    to_ready(k)
    k.rec.screening = None
    if required:
        with pytest.raises(EngineRefused, match="no contraindication check is on record"):
            k.engine.start("demo", 2)
        assert k.engine.state == S.READY and not k.rec.of("begin")
    else:
        assert k.engine.start("demo", 2).result(timeout=0) == "contact_check"


def test_a_yes_recorded_mid_start_or_mid_treatment_ends_it(make_kiosk):
    k = make_kiosk()
    ticket = k.engine.start("demo", 2)  # the first of the day: the self-test runs first
    assert k.engine.state == S.SELF_TEST
    assert ticket.result(timeout=0) == "self_test"  # the start's answer: it goes on by itself
    k.engine.contraindicated()  # a yes recorded meanwhile: it does not
    k.step()
    assert [e.data["reason"] for e in k.emitted("start_refused")] == [
        "the contraindication check just recorded answered yes"
    ]
    k.run(3.0)
    assert k.engine.state == S.READY and not k.rec.of("begin")
    n = len(k.loop.events)
    k.run(0.2)
    _no_output_since(k, n)
    to_running(k)
    k.engine.contraindicated()
    assert k.engine.state == S.RAMP_DOWN
    k.wait_for(S.FINISHED, 5.0)
    assert k.rec.of("finish")[-1][3] == "stopped"


def test_no_start_when_the_treatment_cannot_be_recorded(make_kiosk):
    k = make_kiosk()
    to_ready(k)
    k.rec.fail["begin"] = OSError("database or disk is full")
    n = len(k.loop.events)
    with pytest.raises(EngineRefused, match="cannot be recorded"):
        k.engine.start("demo", 2)
    assert k.engine.state == S.READY and k.engine.treatment is None
    k.run(0.1)
    _no_output_since(k, n)


def test_the_record_is_begun_before_the_output_comes_on(make_kiosk):
    k = make_kiosk()
    to_ready(k)
    k.rec.hold.update({"active_s_today", "begin"})  # a slow SD card: nothing answers yet
    n = len(k.loop.events)
    ticket = k.engine.start("demo", 2)
    assert k.engine.state == S.STARTING and not ticket.done()
    k.run(0.5)
    assert k.engine.state == S.STARTING
    _no_output_since(k, n)
    assert not k.rec.of("begin")  # today's time first: no record for a start that is refused
    k.rec.release()  # today's time answers; the record is asked for next
    k.run(0.1)
    assert [c[0] for c in k.rec.calls if c[0] == "begin"] == ["begin"]
    _no_output_since(k, n)
    t_answer = k.now()
    k.rec.release()  # the record's id
    k.wait_for(S.CONTACT_CHECK, 0.1)
    assert ticket.result() == "contact_check"
    k.step()
    on = [e for e in list(k.loop.events)[n:] if e[1] == "output_on"]
    assert len(on) == 1 and on[0][0] >= t_answer
    assert k.engine.treatment.treatment_id == k.rec.of("begin")[0][2]


@pytest.mark.parametrize("slow", ["active_s_today", "last_screening", "begin"])
def test_a_start_the_history_does_not_answer_fails_closed(make_kiosk, slow):
    k = make_kiosk()
    to_ready(k)
    k.rec.hold.add(slow)
    n = len(k.loop.events)
    ticket = k.engine.start("demo", 2)
    k.run(START_TIMEOUT_S + 0.1)
    assert k.engine.state == S.READY
    with pytest.raises(EngineRefused, match="did not answer in time"):
        ticket.result(timeout=0)
    _no_output_since(k, n)
    # A record begun after all is closed at zero, never left open (it would read "interrupted").
    k.rec.release()
    k.run(0.1)
    begins = k.rec.of("begin")
    assert [(f[2], f[3]) for f in k.rec.of("finish")] == [(b[2], "stopped") for b in begins]
    _no_output_since(k, n)


def test_a_start_after_the_self_test_reads_the_history_first(make_kiosk):
    k = make_kiosk()
    k.rec.fail["active_s_today"] = OSError("disk I/O error")
    with pytest.raises(EngineRefused, match="cannot read today's treatment time"):
        k.engine.start("demo", 2)  # first of the day: no self-test for a start that cannot run
    assert k.engine.state == S.IDLE and k.loop.state == OutputState.OFF


@pytest.mark.parametrize("how", ["error", "no answer"])
def test_a_checkpoint_that_fails_stops_the_treatment(make_kiosk, how):
    k = make_kiosk()
    to_running(k)
    tid = k.engine.treatment.treatment_id
    if how == "error":
        k.rec.fail["checkpoint"] = OSError("disk I/O error")
    else:
        k.rec.hold.add("checkpoint")
    k.wait_for(S.RAMP_DOWN, 2 * CHECKPOINT_S + 1.0)
    k.step()  # the loop takes the stop on its next tick (in a gap it ends at once)
    assert k.loop.state in (OutputState.RAMP_DOWN, OutputState.OFF)  # a stop, not a cut
    assert not k.loop.guard.tripped
    failed = k.emitted("record_failed")
    assert [(e.data["what"], e.data["treatment_id"], e.data["stopping"]) for e in failed] == [
        ("checkpoint", tid, True)
    ]
    assert [c[3] for c in k.rec.events("record")] == ["RECORD_FAILED"]
    k.wait_for(S.FINISHED, 2.0)
    assert not k.loop.guard.tripped
    fin = k.rec.of("finish")
    assert [(f[2], f[3], f[6]) for f in fin] == [(tid, "fault", "RECORD_FAILED")]
    assert k.engine.last_summary["end_reason"] == "fault"
    assert_diagram(k.engine)


def test_a_finish_that_fails_counts_against_the_day(make_kiosk):
    k = make_kiosk()
    to_ready(k)
    k.rec.used_s = k.cfg.limits.daily_max_s - 25.0  # enough for one demo (16 s), not two
    k.rec.fail["finish"] = OSError("disk I/O error")
    k.engine.start("demo", 2)
    k.wait_for(S.FINISHED, 25.0)
    k.run(0.1)
    assert [e.data["what"] for e in k.emitted("record_failed")] == ["finish"]
    del k.rec.fail["finish"]
    # The history still says 25 s are left; the engine knows ~16.5 of them were used.
    with pytest.raises(EngineRefused, match="used up"):
        k.engine.start("demo", 2)
    assert k.loop.state == OutputState.OFF


def test_transitions_are_bounded(make_kiosk):
    # Issue 6 item 12: the list grew by one entry per state change, for the daemon's life.
    k = make_kiosk()
    to_running(k)
    for _ in range(TRANSITIONS_KEPT):  # as many changes as a long day of lift-offs makes
        k.engine._go(S.CONTACT_CHECK)
        k.engine._go(S.RUNNING)
    assert len(k.engine.transitions) == TRANSITIONS_KEPT
    assert list(k.engine.transitions)[-2:] == [
        (S.RUNNING, S.CONTACT_CHECK),
        (S.CONTACT_CHECK, S.RUNNING),
    ]


def test_a_long_lift_off_pauses_the_treatment_and_only_resume_goes_on(make_kiosk):
    """Issue 6 item 2: lifted longer than lifted_max_s, nothing comes back by itself; the
    engine's resume balances what the lift left open, then ramps."""
    base = load_config(env={})
    cfg = base.model_copy(update={"limits": base.limits.model_copy(update={"lifted_max_s": 2.0})})
    k = make_kiosk(cfg)
    to_ready(k)
    k.engine.start("full-face-lift", 3)
    k.wait_for(S.RUNNING, 10.0)
    # Lift in the middle of a 500 ms phase: up to one phase of charge is left open.
    ph = k.loop.wave.phase_ticks
    assert k.run_until(lambda: ph // 4 <= k.loop.wave.t < 3 * ph // 4, 5.0)
    k.rig.sim.inject("lift_off")
    k.wait_for(S.CONTACT_CHECK, 0.1)
    k.wait_for(S.PAUSED, 3.0)
    assert k.emitted("paused")
    assert k.loop.state == OutputState.OFF and not k.rig.sim.enable_high
    open_uc = k.loop.q_net_uc
    assert abs(open_uc) > 5.0
    k.rig.sim.clear("lift_off")
    k.run(3.0)  # skin again, lease kept: still paused, still off
    assert k.engine.state == S.PAUSED and not k.rig.sim.enable_high
    k.engine.resume()
    assert k.run_until(lambda: k.loop.state == OutputState.BALANCE, 0.1)
    k.wait_for(S.RUNNING, 10.0)
    balanced = [d for _, kind, d in k.loop.events if kind == "balanced"]
    assert balanced and abs(balanced[-1]["net_charge_uc"]) <= 1.0, balanced
    assert not k.loop.guard.tripped
    assert_diagram(k.engine)


@pytest.mark.parametrize("sound", [True, False])
def test_sound_off_keeps_the_cues_on_screen_and_the_buzzer_silent(sound):
    base = load_config(env={})
    cfg = base.model_copy(update={"programs": (*base.programs, Program.model_validate(TOUR))})
    k = Kiosk(cfg)
    try:
        assert k.engine.set_sound(sound) is sound
        to_ready(k)
        k.engine.start("test-tour", 2)
        k.wait_for(S.RAMP_UP, 2.0)
        k.run(7.0)  # two relocate cues of the first step and the next-zone cue
        assert len(k.emitted("cue")) >= 3  # the screen is cued either way
        beeps = [e for e in k.rig.sim.events if e[1] == "buzzer" and e[2]]
        assert bool(beeps) is sound
    finally:
        k.close()
