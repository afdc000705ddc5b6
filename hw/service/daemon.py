"""The hardware daemon: ``python -m hw [--config PATH] [--sim] [--socket PATH] [--state-dir DIR]``.

Two processes (docs/architecture.md). This one, the service, is the unit's main process: the
Unix socket, the treatment engine at 50 Hz, the status stream at 20 Hz, sd_notify (the
``service`` asyncio thread; it never blocks: history goes through the ``history`` thread, the only
one that opens SQLite). It starts the real-time process, ``python -m hw.control.rt``
(hw/control/rt.py: the board, the ControlLoop on its real-time thread, the Supervisor), and talks to
it through hw.service.rtlink.LoopProxy, which the engine uses as it used the loop. ``Daemon(...,
rt=None)`` runs the loop in this process instead (in-process tests, parts of the bench).

Start-up: config (a bad one exits with code 2 before any hardware is touched), socket lock, the
real-time process (its board: output enable low at construction; exit 3 without one), history
(damaged files set aside; interrupted treatments closed and latched as a fault to acknowledge),
self-test, READY=1. Nothing resumes a treatment after a restart. SIGTERM/SIGINT cut the output (a
trip if it was on), stop the real-time process and exit with the output off; the real-time process
lost makes this process exit 1 (systemd restarts the unit).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import datetime as _dt
import fcntl
import functools
import io
import itertools
import logging
import os
import queue
import signal
import stat
import sys
import threading
import time
from pathlib import Path

from hw.clock import MonotonicClock
from hw.config import Config, ConfigError, load_config
from hw.config.boardfile import board_path_for
from hw.control.loop import ACTIVE, CommandRefused, ControlLoop, OutputState
from hw.control.runner import LoopRunner
from hw.hal.board import Board
from hw.history import History, HistoryError, TreatmentSummary, ZoneSummary
from hw.journal import log_realtime, setup_logging
from hw.safety import Fault, Guard
from hw.safety.supervisor import Supervisor
from hw.service import protocol as P
from hw.service.engine import Engine, EngineRefused, State

log = logging.getLogger("hw")

STATUS_PERIOD_S = 0.05
ENGINE_PERIOD_S = 0.02
ENGINE_LATE_S = 0.1  # an engine tick later than this is logged (the loop's heartbeat bound: 250 ms)
CLIENT_BUFFER_LIMIT = 256 * 1024  # above this a client is too slow: it misses status lines
CLIENT_BUFFER_DROP = 2 * 1024 * 1024  # above this it is disconnected
# The service stays in the normal scheduling class (it shares no GIL with the loop any more), with
# a heavier CFS weight: the lease and the engine heartbeat pass through it, and a busy kiosk or a
# flood of clients at nice 0 must not hold it off the CPU for 100s of ms (seen at nice 0 on the
# loaded 2-core development machine). Needs RLIMIT_NICE (the unit's LimitNICE=); refused: logged.
SERVICE_NICE = -10
RT_LOST_EXIT_S = 1.0  # the real-time process lost: clients see the fault this long, then exit 1


# --------------------------------------------------------------------------------- history worker
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


# --------------------------------------------------------------------------------- supervision
def service_task(name: str):
    """Supervise a long-lived service coroutine (a Daemon method): if it raises or returns, the
    guard trips INTERNAL, the traceback is logged, the fault is recorded and the systemd watchdog
    pings stop (the unit restarts the daemon; output starts off and latched)."""

    def wrap(fn):
        @functools.wraps(fn)
        async def run(self: Daemon) -> None:
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


# --------------------------------------------------------------------------------- clients
# Fair service (docs/protocol.md, "Fair service"): one turn of the service task serves every
# connection with pending input at most this much, so no connection can hold the service thread,
# which also renews the lease, for longer than its share.
TURN_LINES = 16  # request lines (blank ones included) per connection per turn
TURN_BYTES = 16 * 1024  # request bytes parsed per connection per turn (at least one line)
TURN_REPLY_BYTES = 32 * 1024  # reply bytes per connection per turn
UNGREETED_TURN_LINES = 4  # a connection that has not said hello gets less
UNGREETED_TURN_BYTES = 2048
UNGREETED_PACE_S = 0.005  # ...and, when only such connections have work, one turn per 5 ms
# ...and a sustained rate per connection (token bucket; a run of blank lines costs one per KiB):
# far above what a kiosk or the CLI sends, far below what would keep this thread busy.
LINES_PER_S, LINES_BURST = 2000.0, 1000.0
UNGREETED_LINES_PER_S, UNGREETED_LINES_BURST = 200.0, 50.0
INPUT_BUFFER_MAX = 64 * 1024  # unparsed input above this: stop reading from that socket
WRITE_HIGH_BYTES = 64 * 1024  # unread output above this: serve none of that client's requests
PRIORITY_COMMANDS = frozenset({"lease", "stop", "estop"})  # served first in every turn
# History queries run on the history thread one at a time: a flood of them can never sit in
# front of the treatment record's begin() by more than one query.
BULK_COMMANDS = frozenset({"history", "treatment", "totals", "events", "export_csv"})
MAX_BULK_IN_FLIGHT = 1
# ...and after each one the next waits three times as long as it took: the history thread, which
# shares the GIL and the CPU with the control loop, is busy at most a quarter of the time.
BULK_PAUSE_FACTOR = 3.0
BULK_CHUNK_ITEMS = 10  # records encoded per json.dumps call (the C encoder holds the GIL)
BULK_CHUNK_CHARS = 16 * 1024  # CSV characters encoded per call
# Connection limits.
MAX_CLIENTS = 32  # at the cap the oldest un-greeted (else the idlest) connection makes room
ACCEPT_BACKLOG = 16  # also how many connections one turn of the event loop accepts at most
HELLO_TIMEOUT_S = 10.0  # no hello within this after connecting: closed
IDLE_TIMEOUT_S = 300.0  # nothing received for this and not subscribed to status: closed
WRITE_STALL_S = 5.0  # output unread above WRITE_HIGH_BYTES for this long: closed as too slow
HOUSEKEEPING_PERIOD_S = 0.5
# The engine's ``post`` event carries the self-test's step figures: they go to the history's event
# log and the result to ``status.post``, not to every client (docs/protocol.md, self_test).
NOT_BROADCAST = frozenset({"post"})
LOG_EVERY_S = 60.0  # repeated connection warnings (accept errors, limits): one line per minute


class _RateLimitedLog:
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


class Client(asyncio.Protocol):
    """One connection. The daemon's service task reads its requests from ``inbuf``; nothing is
    dispatched from the socket callbacks themselves."""

    _ids = 0

    def __init__(self, daemon: Daemon):
        Client._ids += 1
        self.n = Client._ids
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.name = "?"
        self.greeted = False
        self.want_status = False
        self.want_events = True
        self.dropped_status = 0
        self.inbuf = bytearray()
        self.head = None  # the next line, taken off inbuf and parsed, not yet run
        self.discarding = False  # inside an oversized line: drop bytes up to its newline
        self.eof = False  # the peer half-closed: answer what it sent, then close
        self.closing = False  # bye, eviction or shutdown: nothing more of it runs
        self.closed_s: float | None = None  # when close() was called (its output may still flush)
        self.busy = False  # a history reply is being built: its next request waits (order)
        self.reading_paused = False
        self.write_paused_since: float | None = None
        self.turn_reply_bytes = 0
        self.connected_s = self.last_rx_s = self.tokens_s = time.monotonic()
        self.tokens = UNGREETED_LINES_BURST
        self.rate_timer = False

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES)
        self.daemon._accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # nothing runs after bye (or after the daemon decided to close it)
        self.last_rx_s = time.monotonic()
        if self.discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self.discarding = False
        self.inbuf += data
        if len(self.inbuf) > INPUT_BUFFER_MAX and not self.reading_paused:
            self.transport.pause_reading()  # back-pressure: the kernel buffers, then the sender
            self.reading_paused = True
        self.daemon._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.daemon._wake()
        return True  # keep our side open: its replies are still sent

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.inbuf.clear()
        self.daemon._lost(self)

    def pause_writing(self) -> None:
        self.write_paused_since = time.monotonic()

    def resume_writing(self) -> None:
        self.write_paused_since = None
        self.daemon._wake()

    # -- used by the daemon
    @property
    def write_blocked(self) -> bool:
        return self.write_paused_since is not None

    def send(self, data: bytes, droppable: bool = False) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        size = t.get_write_buffer_size()
        if size > CLIENT_BUFFER_DROP:
            log.warning("client %d (%s) too slow: disconnected", self.n, self.name)
            self.close(abort=True)
            return
        if droppable and size > CLIENT_BUFFER_LIMIT:
            self.dropped_status += 1
            return
        self.turn_reply_bytes += len(data)
        t.write(data)

    def close(self, abort: bool = False) -> None:
        """Stop serving it; ``abort`` drops unsent output (a client that does not read)."""
        self.closing = True
        self.inbuf.clear()
        if self.closed_s is None:
            self.closed_s = time.monotonic()
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort() if abort else t.close()  # close() still flushes what is queued


class Daemon:
    def __init__(
        self,
        cfg: Config,
        board: Board,
        clock,
        socket_path: Path,
        state_dir: Path,
        notifier,
        *,
        today=_dt.date.today,
        rt=None,
    ):
        self.cfg = cfg
        self.clock = clock
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.notifier = notifier
        # Two backends behind one interface: the loop in this process (tests, the bench), or
        # ``rt``, the hw.service.rtlink.LoopProxy of the real-time process (``python -m hw``).
        self.rt = rt
        self.exit_code = 0
        if rt is None:
            self.board = board
            self.guard = Guard(board, clock)
            self.loop = ControlLoop(cfg, board, clock, self.guard)
            self.runner = LoopRunner(self.loop)
            self.supervisor = Supervisor(self.loop, clock)
        else:
            self.board, self.guard, self.loop = rt.board, rt.guard, rt
            self.runner = self.supervisor = None
            rt.on_lost = self._realtime_lost
        self.worker = HistoryWorker(state_dir / "history.db")
        self.recorder = HistoryRecorder(self.worker, today)
        self.engine = Engine(cfg, self.loop, self.recorder, clock.now, today=today, emit=self._emit)
        self.clients: set[Client] = set()
        self.lease_holder: Client | None = None
        self.service_tasks: dict[str, asyncio.Task] = {}  # long-lived tasks under supervision
        self.service_failure: str | None = None  # set once one failed: no more watchdog pings
        self.startup_post_refused: str | None = None  # why the start-up self-test could not run
        self.sim_skin = "normal"  # the simulated board's skin (sim command)
        self._aio: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False  # request_stop() before serve() is kept, not lost
        self._work: asyncio.Event | None = None  # set when a connection has something to serve
        self._turns = 0
        self._paced = False
        self._bulk_in_flight = 0
        self._bulk_next_s = 0.0  # (monotonic) no history query starts before this
        self._bulk_timer = False
        self._conn_log = _RateLimitedLog()
        self.socket_lock_fd: int | None = None  # flock on <socket>.lock, held while we serve
        # (bench) monotonic times at which the loop applied level changes
        self.cmd_applied_s: collections.deque[float] = collections.deque(maxlen=10000)

    # ---------------------------------------------------------------- start-up
    def start_hardware(self) -> None:
        history = self.worker.start()
        if history.set_aside:
            log.error(
                "HISTORY_DAMAGED: set aside %s (%s)", history.set_aside, history.damage_reason
            )
        interrupted = self.worker.call(lambda h: h.recover_interrupted())
        last_fault = self.worker.call(_unacknowledged_fault)
        if self.rt is None:
            self.runner.start()
            self.supervisor.start()
        if interrupted or last_fault:
            why = (
                f"treatment(s) {interrupted} were interrupted by a restart"
                if interrupted
                else f"{last_fault} was never acknowledged"
            )
            log.warning("UNACKNOWLEDGED %s", why)
            self.guard.trip(Fault.UNACKNOWLEDGED, why)
            self.recorder.event("fault", str(Fault.UNACKNOWLEDGED), why)
        else:
            try:
                self.engine.self_test()
            except EngineRefused as e:
                # A charger plugged in or the e-stop pressed at boot: come up idle and say why;
                # the self-test runs when a start asks for it (after the cause is gone).
                self.startup_post_refused = str(e)
                log.warning("SELF-TEST not run at start-up: %s", e)

    # ---------------------------------------------------------------- events and status
    def _emit(self, name: str, data: dict) -> None:
        if name in (
            "fault",
            "contact_lost",
            "contact_restored",
            "cue",
            "treatment_finished",
            "start_refused",
            "limit",
        ):
            # A fault is an error for journalctl -p err; the rest is information.
            log.log(logging.ERROR if name == "fault" else logging.INFO, "EVENT %s %s", name, data)
        if name in NOT_BROADCAST:
            return
        msg = P.event(name, data)
        for c in list(self.clients):
            if c.greeted and c.want_events:
                c.send(msg)

    def status(self) -> dict:
        s = self.engine.status()
        s["lease_holder"] = self.lease_holder.name if self.lease_holder else None
        return s

    def _service_failed(self, name: str, e: BaseException | None) -> None:
        why = f"service task {name} " + (f"failed: {type(e).__name__}: {e}" if e else "ended")
        if self.service_failure is None:
            self.service_failure = why
        log.error("INTERNAL %s; output cut, watchdog pings stop", why, exc_info=e)
        self.guard.trip(Fault.INTERNAL, why)
        tr = self.engine.treatment
        self.recorder.event("fault", str(Fault.INTERNAL), why, tr.treatment_id if tr else None)

    def _realtime_lost(self, why: str) -> None:
        """The real-time process died or misbehaved (hw.service.rtlink): the dead-man opens the
        relay. Report it, stop the watchdog pings, and exit non-zero soon (systemd restarts the
        unit)."""
        if self.rt.stopping:
            return
        msg = f"real-time process ended: {why}"
        log.error("INTERNAL %s; watchdog pings stop, exiting for a restart", msg)
        if self.service_failure is None:
            self.service_failure = msg
        self.exit_code = 1
        tr = self.engine.treatment if hasattr(self, "engine") else None
        self.recorder.event("fault", str(Fault.INTERNAL), msg, tr.treatment_id if tr else None)
        try:
            # A moment for the clients (and the history) to see the fault, then exit.
            self._aio.call_soon_threadsafe(self._aio.call_later, RT_LOST_EXIT_S, self.request_stop)
        except (AttributeError, RuntimeError):  # not serving (yet, or any more)
            self.request_stop()

    def watchdog_healthy(self) -> bool:
        """Both halves: the loop (through its supervisor, in whichever process) and the service."""
        loop_ok = self.supervisor.healthy() if self.rt is None else self.rt.healthy()
        return loop_ok and self.services_alive()

    def services_alive(self) -> bool:
        """Every supervised task runs and the engine beat within its bound."""
        if self.service_failure is not None:
            return False
        if any(t.done() for t in self.service_tasks.values()):
            return False
        beat = self.loop.service_beat_s
        return beat is not None and self.clock.now() - beat <= self.loop.service_beat_max_s

    @service_task("status")
    async def _status_task(self) -> None:
        last_state = None
        while True:
            await asyncio.sleep(STATUS_PERIOD_S)
            st = self.status()
            msg = P.event("status", st)
            for c in list(self.clients):
                if c.greeted and c.want_status:
                    c.send(msg, droppable=True)
            summary = f"{st['state']}" + (f" {st['fault']['code']}" if st["fault"] else "")
            if summary != last_state:
                self.notifier.status(summary)
                last_state = summary

    @service_task("engine")
    async def _engine_task(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(ENGINE_PERIOD_S)
            now = time.monotonic()
            if now - last > ENGINE_LATE_S:
                # The engine's beat is what the loop's service-heartbeat check waits for.
                self._conn_log.warning(
                    "late", "engine tick late: %.0f ms since the last", (now - last) * 1000
                )
            last = now
            if self.rt is not None:
                self.rt.check()  # drained, alive, publishing (else: lost, see _realtime_lost)
            self.engine.tick()
            if self.lease_holder is not None and self.engine.state not in _LEASED:
                self.lease_holder = None

    @service_task("watchdog")
    async def _watchdog_task(self) -> None:
        period = (self.notifier.watchdog_s or 2.0) / 2.0
        while True:
            await asyncio.sleep(min(period, 0.5))
            # Ping only while the loop ticks, the ADC answers, the supervisor runs, the engine
            # beats and every service task is alive.
            if self.watchdog_healthy():
                self.notifier.watchdog()

    # ---------------------------------------------------------------- socket: fair service
    def _wake(self) -> None:
        if self._work is not None:
            self._work.set()

    def _accepted(self, client: Client) -> None:
        if self._stop is not None and self._stop.is_set():
            client.close(abort=True)
            return
        if len(self.clients) >= MAX_CLIENTS:
            # Always room for a new connection (the kiosk after a restart): one already closed
            # but not yet flushed goes first, then the oldest that never said hello, else the
            # one idle longest; never the lease holder.
            others = [c for c in self.clients if c is not self.lease_holder]
            victims = (
                [c for c in others if c.closing] or [c for c in others if not c.greeted] or others
            )
            if victims:
                v = min(victims, key=_eviction_key)
                if not v.closing:
                    self._conn_log.warning(
                        "cap",
                        "connection cap %d reached: closed client %d (%s, %s)",
                        MAX_CLIENTS,
                        v.n,
                        v.name,
                        "idle" if v.greeted else "no hello",
                    )
                v.close(abort=True)
                self.clients.discard(v)
        self.clients.add(client)

    def _lost(self, client: Client) -> None:
        self.clients.discard(client)
        if client.busy:
            client.busy = False  # (its query still finishes; the reply has nowhere to go)
        if self.lease_holder is client:
            self.lease_holder = None
            self.engine.cancel_pending_start()  # its self-test may still be running
            if self.loop.state in ACTIVE and self.loop.state != OutputState.RAMP_DOWN:
                # The controlling client is gone: its lease cannot be renewed, cut now.
                log.warning("controller %s disconnected during output", client.name)
                self.guard.trip(Fault.LEASE_EXPIRED, f"controller {client.name} disconnected")
        self._wake()

    @service_task("service")
    async def _service_task(self) -> None:
        """Runs the requests of every connection, a bounded share of each per turn."""
        while True:
            await self._work.wait()
            self._work.clear()
            left = self._turn()
            if left == "greeted":
                self._work.set()
                await asyncio.sleep(0)  # socket callbacks and the other tasks run between turns
            elif left == "ungreeted" and not self._paced:
                # Only connections that never said hello still have work: they get their next
                # share after a pause, so a newline flood cannot keep this thread busy.
                self._paced = True
                self._aio.call_later(UNGREETED_PACE_S, self._paced_wake)

    def _paced_wake(self) -> None:
        self._paced = False
        self._wake()

    def _turn(self) -> str | None:
        """One turn: connections whose next request is a lease renewal, stop or e-stop first,
        then the others (rotating who goes first). Says who has work left for another turn:
        "greeted", "ungreeted" (only connections without hello) or None."""
        ready = [c for c in self.clients if self._servable(c)]
        if not ready:
            return None
        self._turns += 1
        k = self._turns % len(ready)
        ready = ready[k:] + ready[:k]
        for c in ready:
            if c.head is None:
                c.head = self._next_item(c)
        ready.sort(key=lambda c: not _is_priority(c.head))  # stable: rotation kept within lanes
        left = None
        for c in ready:
            if self._serve(c):
                left = "greeted" if c.greeted or left == "greeted" else "ungreeted"
        return left

    def _servable(self, c: Client) -> bool:
        if c.closing:
            return False
        if c.busy:
            # A reply of its is pending (a history query, a start): lease, stop and e-stop still
            # run (their replies overtake it; every reply carries its request's id).
            if c.head is None:
                c.head = self._next_item(c)
            return _is_priority(c.head)
        if c.head is None and not c.inbuf:
            if c.eof:
                c.close()  # half-closed and everything it sent has been answered
            return False
        if c.write_blocked:
            # It does not read: only a lease renewal, stop or e-stop of it still runs (tiny
            # replies; the kiosk's UI being slow for a moment must not expire its lease).
            if c.head is None:
                c.head = self._next_item(c)
            return _is_priority(c.head)
        return True

    def _next_item(self, c: Client):
        """Take the next line off ``c.inbuf``: ("blank" | "error" | "req", value, bytes), or None
        when no complete line is there."""
        buf = c.inbuf
        nl = buf.find(b"\n", 0, P.MAX_LINE_BYTES + 1)
        if nl < 0:
            if len(buf) > P.MAX_LINE_BYTES:
                rest = buf.find(b"\n")
                if rest < 0:
                    buf.clear()
                    c.discarding = True  # the rest of it is dropped as it arrives
                else:
                    del buf[: rest + 1]
                msg = f"a request may be at most {P.MAX_LINE_BYTES} bytes"
                return ("error", P.reply_error(None, P.TOO_LARGE, msg), P.MAX_LINE_BYTES)
            if c.eof:
                buf.clear()  # a partial last line before end-of-file gets no reply
            return None
        if nl == 0 or not buf[:nl].strip():
            # A run of blank lines is one item (its bytes still count against the budget).
            n = len(buf) - len(buf.lstrip())
            n = buf.rfind(b"\n", 0, max(n, nl + 1)) + 1
            del buf[:n]
            return ("blank", None, n)
        line = bytes(buf[:nl])
        del buf[: nl + 1]
        try:
            return ("req", P.parse_request(line), nl + 1)
        except P.ProtocolError as e:
            return ("error", P.reply_error(e.req_id, e.code, e.message), nl + 1)

    def _serve(self, c: Client) -> bool:
        """Serve ``c`` within its budget for this turn. True if it has more to do right away."""
        max_lines = TURN_LINES if c.greeted else UNGREETED_TURN_LINES
        max_bytes = TURN_BYTES if c.greeted else UNGREETED_TURN_BYTES
        rate, burst = (
            (LINES_PER_S, LINES_BURST)
            if c.greeted
            else (UNGREETED_LINES_PER_S, UNGREETED_LINES_BURST)
        )
        now = time.monotonic()
        c.tokens = min(burst, c.tokens + (now - c.tokens_s) * rate)
        c.tokens_s = now
        lines = nbytes = 0
        c.turn_reply_bytes = 0
        more = True
        while lines < max_lines and nbytes < max_bytes and c.turn_reply_bytes < TURN_REPLY_BYTES:
            if c.tokens < 1.0:
                # Over its rate: its next share comes when it has earned one line again.
                if not c.rate_timer:
                    c.rate_timer = True
                    self._aio.call_later((1.0 - c.tokens) / rate, self._rate_wake, c)
                more = False
                break
            if c.closing:
                more = False
                break
            item = c.head if c.head is not None else self._next_item(c)
            c.head = None
            if item is None:
                more = False
                break
            if c.busy and not _is_priority(item):
                c.head = item  # waits for its pending reply (woken when that is sent)
                more = False
                break
            if c.write_blocked and not _is_priority(item):
                c.head = item  # waits until it reads (woken by resume_writing)
                more = False
                break
            kind, value, size = item
            if kind == "req" and value.cmd in BULK_COMMANDS and c.greeted and not self._bulk_ok():
                c.head = item  # waits its turn (woken when the history thread may take it)
                more = False
                break
            lines += 1
            nbytes += size
            c.tokens -= 1.0 + (size // 1024 if kind == "blank" else 0)
            if kind == "error":
                c.send(value)
            elif kind == "req":
                self._dispatch(c, value)
        if c.reading_paused and len(c.inbuf) < INPUT_BUFFER_MAX // 2 and not c.closing:
            c.transport.resume_reading()
            c.reading_paused = False
        if c.eof and c.head is None and not c.inbuf and not c.busy and not c.closing:
            c.close()  # half-closed and everything it sent has been answered
        return more

    def _rate_wake(self, c: Client) -> None:
        c.rate_timer = False
        self._wake()

    def _bulk_ok(self) -> bool:
        if self._bulk_in_flight >= MAX_BULK_IN_FLIGHT:
            return False  # woken by the reply of the one in flight
        wait_s = self._bulk_next_s - time.monotonic()
        if wait_s > 0:
            if not self._bulk_timer:  # one timer, however many turns ask meanwhile
                self._bulk_timer = True
                self._aio.call_later(wait_s, self._bulk_wake)
            return False
        return True

    def _bulk_wake(self) -> None:
        self._bulk_timer = False
        self._wake()

    def _dispatch(self, client: Client, req: P.Request) -> None:
        t_rx = time.monotonic()
        if not client.greeted and req.cmd != "hello":
            client.send(P.reply_error(req.id, P.NOT_HELLO, "say hello first"))
            return
        try:
            result = self._command(client, req, t_rx)
        except P.ProtocolError as e:
            client.send(P.reply_error(req.id, e.code, e.message))
            return
        except (EngineRefused, CommandRefused) as e:
            client.send(P.reply_error(req.id, P.REFUSED, str(e)))
            return
        except Exception as e:  # noqa: BLE001 - a bug answers with an error, never kills the daemon
            log.exception("command %s failed", req.cmd)
            client.send(P.reply_error(req.id, P.INTERNAL, f"{type(e).__name__}"))
            return
        if isinstance(result, concurrent.futures.Future):
            # A history query: its reply (already encoded, off this thread) is sent when done;
            # the client's next request waits for it, so its replies stay in order.
            client.busy = True
            self._bulk_in_flight += 1
            t_submit = time.monotonic()

            def done(f: concurrent.futures.Future) -> None:
                self._bulk_in_flight -= 1
                now = time.monotonic()
                self._bulk_next_s = now + BULK_PAUSE_FACTOR * (now - t_submit)
                client.busy = False
                e = f.exception()
                if e is None:
                    client.send(f.result())
                elif isinstance(e, LookupError):
                    client.send(P.reply_error(req.id, P.NOT_FOUND, str(e).strip("'\"")))
                else:
                    client.send(P.reply_error(req.id, P.INTERNAL, type(e).__name__))
                self._wake()

            def to_service_thread(f: concurrent.futures.Future) -> None:
                try:
                    self._aio.call_soon_threadsafe(done, f)
                except RuntimeError:
                    pass  # the service loop has ended (shutdown): the reply is dropped

            result.add_done_callback(to_service_thread)
            return
        if isinstance(result, asyncio.Future):
            # A start waiting for the history (its record and today's time): settled by the
            # engine on this thread. Its next requests wait (order), but lease, stop and e-stop.
            client.busy = True

            def settled(f: asyncio.Future) -> None:
                client.busy = False
                e = f.exception()
                if e is None:
                    client.send(P.reply_ok(req.id, f.result()))
                elif isinstance(e, (EngineRefused, CommandRefused)):
                    client.send(P.reply_error(req.id, P.REFUSED, str(e)))
                else:
                    client.send(P.reply_error(req.id, P.INTERNAL, type(e).__name__))
                self._wake()

            result.add_done_callback(settled)
            return
        client.send(P.reply_ok(req.id, result))
        if client.closing:  # bye: its reply is flushed, nothing after it runs
            client.close()

    def _command(self, client: Client, req: P.Request, t_rx: float):
        cmd, a = req.cmd, req.args
        eng = self.engine
        if cmd == "hello":
            if a["protocol"] != P.PROTOCOL_VERSION:
                raise P.ProtocolError(
                    P.VERSION, f"this daemon speaks protocol {P.PROTOCOL_VERSION}"
                )
            client.greeted, client.name = True, a["client"]
            client.want_status = a.get("status", False)
            client.want_events = a.get("events", True)
            return {
                "protocol": P.PROTOCOL_VERSION,
                "daemon": "microcurrent-kiosk hw",
                "sim": self.board.sim is not None,
                "lease_ms": self.cfg.limits.lease_ms,
                "level_count": self.cfg.limits.level_count,
            }
        if cmd == "subscribe":
            client.want_status = a.get("status", client.want_status)
            client.want_events = a.get("events", client.want_events)
            return {}
        if cmd == "bye":
            client.closing = True  # lines pipelined after it are discarded, never run
            client.inbuf.clear()
            return {}
        if cmd == "status":
            return self.status()
        if cmd == "programs":
            return {"programs": [_program_dict(p) for p in self.cfg.programs]}
        if cmd in ("screening", "screening_status"):
            # Kept with the history (on its thread; the engine's work goes first).
            answers = a.get("answers")
            w = self.worker

            def job(h):
                if cmd == "screening":
                    return P.reply_ok(req.id, h.record_screening(answers))
                last = h.last_screening()
                return P.reply_ok(
                    req.id, {"on_record": False} if last is None else {"on_record": True, **last}
                )

            return w.submit(job, urgent=True)
        if cmd == "sim":
            return self._sim_command(a)
        if cmd in P.CONTROL_COMMANDS:
            holder = self.lease_holder
            if holder is not None and holder is not client and eng.state in _LEASED:
                raise P.ProtocolError(P.LEASE_HELD, f"{holder.name} controls the treatment")
            if cmd == "start":
                ticket = eng.start(a["program"], a.get("level"))
                self.lease_holder = client
                return self._start_reply(ticket)
            if cmd == "set_level":
                level = eng.set_level(a["level"])
            elif cmd == "level_up":
                level = eng.level_step(+1)
            elif cmd == "level_down":
                level = eng.level_step(-1)
            elif cmd == "pause":
                eng.pause()
                return {"state": str(eng.state)}
            else:  # resume
                eng.resume()
                # No output without a holder: a resume after the holder left takes the lease
                # (the loop armed a fresh deadline with the start; this client renews it).
                self.lease_holder = client
                return {"state": str(eng.state)}
            self._track_apply(t_rx)
            return {"level": level}
        if cmd == "lease":
            if self.lease_holder is None:
                # Nothing running (the treatment just ended): renewing is harmless.
                return {"lease_ms": self.cfg.limits.lease_ms, "held": False}
            if self.lease_holder is not client:
                raise P.ProtocolError(P.LEASE_HELD, "this client does not hold the lease")
            self.loop.renew_lease()
            return {"lease_ms": self.cfg.limits.lease_ms, "held": True}
        if cmd == "stop":
            eng.stop()  # anyone may stop: stopping is always safe
            return {"state": str(eng.state)}
        if cmd == "estop":
            eng.estop(f"e-stop from {client.name}")
            return {"state": "fault"}
        if cmd == "acknowledge":
            eng.acknowledge()
            return {"state": str(eng.state)}
        if cmd == "self_test":
            eng.self_test()
            return {"state": str(eng.state)}
        return self._history_command(cmd, a, req.id)

    def _start_reply(self, ticket: concurrent.futures.Future):
        """The reply to ``start``: when the history answered and the output was asked for (or the
        self-test began), or a REFUSED error when the start could not be recorded."""
        if ticket.done():
            return {"state": ticket.result()}
        out = self._aio.create_future()

        def settle(t: concurrent.futures.Future) -> None:
            if out.done():
                return
            e = t.exception()
            if e is None:
                out.set_result({"state": t.result()})
            else:
                out.set_exception(e)

        # The engine settles it on this (the service) thread, inside its tick.
        ticket.add_done_callback(settle)
        return out

    def _track_apply(self, t_rx: float) -> None:
        # For the bench: when does the loop act on a level change? It applies queued commands at
        # the start of its next tick and writes the DAC toward the new target in that same tick.
        def mark() -> None:
            self.cmd_applied_s.append(time.monotonic())

        if self.rt is not None:
            # The real-time process answered after the tick that applied it (its monotonic time).
            self.cmd_applied_s.append(self.rt.last_reply_t_s)
            return
        self.loop._queue(mark)

    def _sim_command(self, a: dict) -> dict:
        """The desktop simulation panel (docs/protocol.md, ``sim``): only on the simulated board."""
        sim = self.board.sim
        if sim is None:
            raise P.ProtocolError(P.NOT_SIM, "sim works only with the simulated board (--sim)")
        from hw.hal.sim.board import FAULTS, SKINS  # the sim package is only needed with --sim

        action = a["action"]
        if action in ("inject", "clear"):
            fault = a.get("fault")
            if fault not in FAULTS:
                raise P.ProtocolError(
                    P.OUT_OF_RANGE, f"sim.fault must be one of {', '.join(FAULTS)}"
                )
            if action == "inject":
                if fault not in sim.active_faults:
                    sim.inject(fault)
            elif fault in sim.active_faults:
                sim.clear(fault)
        elif action == "skin":
            skin = a.get("skin")
            if skin not in SKINS:
                raise P.ProtocolError(P.OUT_OF_RANGE, f"sim.skin must be one of {', '.join(SKINS)}")
            sim.set_skin(skin)
            self.sim_skin = skin
        return {
            "faults": sorted(sim.active_faults),
            "skin": self.sim_skin,
            "known_faults": list(FAULTS),
            "skins": list(SKINS),
        }

    def _history_command(self, cmd: str, a: dict, req_id) -> concurrent.futures.Future:
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
            return reply(lambda h: [_record_dict(r) for r in h.recent(limit)])
        if cmd == "treatment":
            tid = a["id"]

            def one(h):
                r = h.treatment(tid)
                if r is None:
                    raise LookupError(f"no treatment {tid}")
                return _record_dict(r)

            return reply(one)
        if cmd == "totals":
            today = self.recorder.today()
            return reply(
                lambda h: {
                    **h.totals(),
                    "streak_days": h.streak_days(today),
                    "today_active_s": h.active_s_on(today),
                    "daily_max_s": self.cfg.limits.daily_max_s,
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

    # ---------------------------------------------------------------- run
    async def serve(self, ready: threading.Event | None = None) -> None:
        """Serve until request_stop(); sets ``ready`` once the self-test is over."""
        self._aio = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._work = asyncio.Event()
        if self._stop_requested:  # SIGTERM before we got here (e.g. during the self-test)
            log.info("stop requested before serving: not opening the socket")
            return
        if self.socket_lock_fd is None:
            self.socket_lock_fd = acquire_socket_lock(self.socket_path)
        self._aio.set_exception_handler(self._loop_exception)
        # Whether the loop got the real-time scheduling it asked for (in its own process when
        # split): a refusal is a warning in the journal.
        prio = self.cfg.loop.realtime_priority
        note = self.rt.sched_note if self.rt is not None else self.runner.sched_note
        log_realtime(log, "loop thread", prio, note)
        if self.rt is not None:
            self.rt.poll()
            self._aio.add_reader(self.rt.sock.fileno(), self.rt.poll)
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
            path.unlink()  # stale: we hold the lock, so no live daemon owns it
        server = await self._aio.create_unix_server(
            lambda: Client(self), path=str(path), backlog=ACCEPT_BACKLOG
        )
        os.chmod(path, 0o660)
        tasks = [
            asyncio.create_task(t())
            for t in (
                self._status_task,
                self._engine_task,
                self._watchdog_task,
                self._service_task,
                self._housekeeping_task,
            )
        ]
        # READY once the self-test has finished (or a latched fault is being shown).
        while not self._stop.is_set() and (
            self.engine.state == State.SELF_TEST
            or self.engine.state == State.IDLE
            and (
                not self.guard.tripped
                and self.loop.post_result is None
                and self.startup_post_refused is None
            )
        ):
            await asyncio.sleep(0.01)
        if not self._stop.is_set():
            st = self.status()
            self.notifier.ready(f"{st['state']}")
            log.info("READY state=%s post=%s socket=%s", st["state"], st["post"], path)
            if ready is not None:
                ready.set()
        await self._stop.wait()
        # Stop: no new connections, and pending requests are dropped, not finished (a history
        # flood must not hold SIGTERM past the unit's TimeoutStopSec).
        server.close()
        pending = sum(c.inbuf.count(b"\n") + (c.head is not None) for c in self.clients)
        log.info("STOPPING: %d pending request(s) dropped", pending)
        for c in list(self.clients):
            c.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # quietly: no CancelledError logs
        await asyncio.sleep(0)  # the transports' last flush and connection_lost callbacks
        for c in list(self.clients):
            c.close(abort=True)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    @service_task("housekeeping")
    async def _housekeeping_task(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_PERIOD_S)
            self._housekeeping(time.monotonic())

    def _housekeeping(self, now: float) -> None:
        """Connection limits: hello timeout, write stall, idle limit."""
        for c in list(self.clients):
            if c.closing:
                if c.closed_s is not None and now - c.closed_s > WRITE_STALL_S:
                    c.close(abort=True)  # closed but never read its last replies: let it go
                    self.clients.discard(c)
                continue
            if not c.greeted and now - c.connected_s > HELLO_TIMEOUT_S:
                self._conn_log.warning(
                    "hello", "client %d closed: no hello within %g s", c.n, HELLO_TIMEOUT_S
                )
                c.close(abort=True)
            elif c.write_paused_since is not None and now - c.write_paused_since > WRITE_STALL_S:
                log.warning("client %d (%s) too slow: disconnected", c.n, c.name)
                c.close(abort=True)
            elif (
                not c.want_status
                and c is not self.lease_holder
                and now - c.last_rx_s > IDLE_TIMEOUT_S
            ):
                self._conn_log.warning(
                    "idle", "client %d (%s) closed: idle for %g s", c.n, c.name, IDLE_TIMEOUT_S
                )
                c.close(abort=True)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # accept() failing (EMFILE...) is reported by asyncio once per retry: rate-limit it.
        message = str(context.get("message", ""))
        if "accept" in message:
            self._conn_log.warning("accept", "%s: %s", message, context.get("exception"))
            return
        loop.default_exception_handler(context)

    def request_stop(self) -> None:
        """Thread- and signal-safe; before serve() it makes serve() return at once."""
        self._stop_requested = True
        aio, stop = self._aio, self._stop
        if aio is not None and stop is not None:
            try:
                aio.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop has already ended

    def shutdown(self) -> None:
        """Output off whatever state we are in, then release everything."""
        self.notifier.stopping()
        if self.loop.state in ACTIVE:
            self.guard.trip(Fault.SHUTDOWN, "daemon stopping")
        self.engine.tick()  # records the end of a treatment cut by the shutdown
        if self.rt is not None:
            code = self.rt.shutdown()
            log.info("real-time process stopped (exit %s)", code)
        else:
            self.runner.stop()
            self.supervisor.stop()
            self.board.close()
        self.worker.stop()
        if self.socket_lock_fd is not None:  # the socket is gone: another daemon may start
            os.close(self.socket_lock_fd)
            self.socket_lock_fd = None
        log.info("STOPPED output off")


class SocketInUse(RuntimeError):
    """Another daemon holds the socket's lock."""


def acquire_socket_lock(socket_path: Path) -> int:
    """flock(2) ``<socket>.lock`` and return its fd (held until closed or the process ends).

    A second daemon must not take a live daemon's socket over (nor remove it when it stops); a
    lock, not a connect probe, says whether one is alive: the kernel drops it when the owner dies.
    The lock file is never removed (removing it would let two daemons lock two different files).
    """
    lock = socket_path.with_name(socket_path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SocketInUse(
            f"another daemon owns {socket_path} (it holds {lock}); not starting"
        ) from None
    return fd


_LEASED = frozenset(
    {
        State.STARTING,
        State.CONTACT_CHECK,
        State.RAMP_UP,
        State.RUNNING,
        State.PAUSED,
        State.RAMP_DOWN,
        State.SELF_TEST,
    }
)


def _eviction_key(c: Client) -> float:
    if c.closing:
        return c.closed_s or 0.0
    return c.last_rx_s if c.greeted else c.connected_s


def _is_priority(item) -> bool:
    return item is not None and item[0] == "req" and item[1].cmd in PRIORITY_COMMANDS


def _unacknowledged_fault(h: History) -> str | None:
    """The code of a fault recorded after the last acknowledgement, if any."""
    last_fault = None
    for e in h.events(limit=1000):
        if e.kind == "fault":
            last_fault = e.code
        elif e.kind == "acknowledge":
            last_fault = None
    return last_fault


def _program_dict(p) -> dict:
    return {
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "duration_s": sum(s.duration_s for s in p.steps),
        "steps": [
            {
                "zone": s.zone,
                "motion": s.motion,
                "duration_s": s.duration_s,
                "max_level": s.max_level,
                "text": s.text,
            }
            for s in p.steps
        ],
    }


def _record_dict(r) -> dict:
    d = dict(r.__dict__)
    d["zones"] = [z.__dict__ for z in r.zones]
    return d


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw", description="microcurrent-kiosk hw daemon")
    ap.add_argument("--config", help="site YAML merged over the packaged defaults (or MCK_CONFIG)")
    ap.add_argument("--sim", action="store_true", help="use the simulated board (desktop, tests)")
    ap.add_argument(
        "--board",
        help="board file from `python -m hw.calibrate` (or MCK_BOARD; default "
        "/etc/microcurrent-kiosk/board.yaml, with --sim the packaged simulated board)",
    )
    ap.add_argument("--socket", default=os.environ.get("MCK_SOCKET", "/run/microcurrent/hw.sock"))
    ap.add_argument(
        "--state-dir", default=os.environ.get("MCK_STATE_DIR", "/var/lib/microcurrent-kiosk")
    )
    ap.add_argument("--sim-mirror", help="(sim) mirror the board's pins into this file")
    args = ap.parse_args(argv)
    setup_logging(sys.stdout)  # <N> priority prefixes when stdout is the journal
    from hw.service.notify import Notifier

    notifier = Notifier()
    try:
        cfg = load_config(args.config, board_path=board_path_for(args.board, sim=args.sim))
    except ConfigError as e:
        for p in e.problems:
            log.error("CONFIG %s", p)
        log.error("CONFIG invalid: no output; fix the file(s) named above")
        notifier.status("config error: no output")
        return 2
    try:  # before the board: a second daemon must not touch the pins either
        lock_fd = acquire_socket_lock(Path(args.socket))
    except (SocketInUse, OSError) as e:
        log.error("SOCKET %s", e)
        return 5
    try:
        os.setpriority(os.PRIO_PROCESS, 0, SERVICE_NICE)
        log.info("service: nice %d", os.getpriority(os.PRIO_PROCESS, 0))
    except OSError as e:
        log.warning("service: nice %d refused (%s); running at nice 0", SERVICE_NICE, e)
    clock = MonotonicClock()
    state_dir = Path(args.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.error("STATE cannot use %s: %s", state_dir, e)
        return 4
    # The board, the loop, the guard and the supervisor live in the real-time process
    # (hw/control/rt.py); it holds the socket lock too, so no second daemon starts while it lives.
    from hw.service.rtlink import RealtimeUnavailable, spawn_realtime

    try:
        rt = spawn_realtime(
            cfg,
            site_config=args.config or os.environ.get("MCK_CONFIG"),
            board_path=str(board_path_for(args.board, sim=args.sim)),
            sim=args.sim,
            sim_mirror=args.sim_mirror,
            keep_fds=(lock_fd,),
        )
    except RealtimeUnavailable as e:
        log.error("REALTIME %s", e)
        return e.exit_code
    log.info("REALTIME process pid=%d: %s", rt.rt_pid, rt.sched_note)
    daemon = Daemon(cfg, None, clock, Path(args.socket), state_dir, notifier, rt=rt)
    daemon.socket_lock_fd = lock_fd

    def on_signal(signum, _frame) -> None:
        log.info("SIGNAL %s: output off, stopping", signal.Signals(signum).name)
        if daemon.loop.state in ACTIVE:
            rt.trip_nowait(Fault.SHUTDOWN, f"signal {signal.Signals(signum).name}")
        # From now on the real-time process ending is expected (a terminal's or a cgroup's
        # signal may reach it too), not a loss that exits 1.
        rt.stopping = True
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start_hardware()
        asyncio.run(daemon.serve())
    except HistoryError as e:
        log.error("HISTORY %s", e)
        return 4
    finally:
        daemon.shutdown()
    return daemon.exit_code
