"""The engine's states, its refusal, and the Recorder it records through (hw/service/engine.py)."""

from __future__ import annotations

from concurrent.futures import Future
from enum import StrEnum
from typing import Protocol


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

    # The latest contraindication check ({"passed", "t", "answers"}), or None if none is on record.
    def last_screening(self) -> Future[dict | None]: ...


class EngineRefused(Exception):
    """A request the engine cannot carry out now (the message says why)."""
