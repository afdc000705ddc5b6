"""Supervision of the service's long-lived asyncio tasks, and a rate-limited warning log.

:func:`service_task` wraps a Daemon coroutine: whatever ends it (an exception, or a return) trips
the guard INTERNAL through ``Daemon._service_failed`` (docs/safety.md, "service tasks").
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time

log = logging.getLogger("hw")

LOG_EVERY_S = 60.0  # repeated connection warnings (accept errors, limits): one line per minute


def service_task(name: str):
    """Supervise a long-lived service coroutine (a Daemon method): if it raises or returns, the
    guard trips INTERNAL, the traceback is logged, the fault is recorded and the systemd watchdog
    pings stop (the unit restarts the daemon; output starts off and latched)."""

    def wrap(fn):
        @functools.wraps(fn)
        async def run(self) -> None:
            self.service_tasks[name] = asyncio.current_task()
            try:
                await fn(self)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - every failure ends in the same trip
                self._service_failed(name, e)
            else:
                self._service_failed(name, None)

        return run

    return wrap


class RateLimitedLog:
    """One log line per ``every_s`` per key, with how many were left out."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock=time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: collections.Counter = collections.Counter()

    def warning(self, key: str, fmt: str, *args) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._skipped[key] += 1
            return
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        suffix = f" ({skipped} more like it since the last one)" if skipped else ""
        log.warning(fmt + suffix, *args)
