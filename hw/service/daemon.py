"""The hardware daemon's service process: the Daemon that wires it together and runs it.

Two processes (docs/architecture.md). This one, the service, is the unit's main process: the
Unix socket, the treatment engine at 50 Hz, the status stream at 20 Hz, sd_notify (the
``service`` asyncio thread; it never blocks: history goes through the ``history`` thread, the only
one that opens SQLite). It starts the real-time process, ``python -m hw.control.rt``
(hw/control/rt.py: the board, the ControlLoop on its real-time thread, the Supervisor), and talks to
it through hw.service.rtlink.LoopProxy, which the engine uses as it used the loop. ``Daemon(...,
rt=None)`` runs the loop in this process instead (in-process tests, parts of the bench).

The Daemon owns the history worker (recorder.py), the engine (engine.py), the connections
(connection.py), the fair service (scheduler.py) and the commands (commands.py); its long-lived
asyncio tasks are supervised (tasks.py). ``python -m hw`` (start-up, signals, exit codes) is
hw/service/main.py. Nothing resumes a treatment after a restart; shutdown() leaves the output off.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import logging
import os
import stat
import threading
import time
from pathlib import Path

from hw.config import Config
from hw.control.loop import ACTIVE, ControlLoop, OutputState
from hw.control.runner import LoopRunner
from hw.hal.board import Board
from hw.journal import log_realtime
from hw.safety import Fault, Guard
from hw.safety.supervisor import Supervisor
from hw.service import protocol as P
from hw.service.commands import LEASED, Commands
from hw.service.connection import (
    ACCEPT_BACKLOG,
    HELLO_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_CLIENTS,
    Client,
    close_expired,
    make_room,
)
from hw.service.engine import Engine, EngineRefused, State
from hw.service.history_commands import BULK_CHUNK_CHARS, BULK_CHUNK_ITEMS
from hw.service.recorder import HistoryRecorder, HistoryWorker, unacknowledged_fault
from hw.service.scheduler import (
    TURN_LINES,
    TURN_REPLY_BYTES,
    UNGREETED_PACE_S,
    UNGREETED_TURN_LINES,
    BulkGate,
    FairScheduler,
)
from hw.service.socketlock import SocketInUse, acquire_socket_lock
from hw.service.tasks import RateLimitedLog, service_task

# What other code imports from here: the daemon, and (for the tests) names that now live in the
# modules above, re-exported. A monkeypatch must target the module that reads the name.
__all__ = [
    "BULK_CHUNK_CHARS",
    "BULK_CHUNK_ITEMS",
    "HELLO_TIMEOUT_S",
    "HOUSEKEEPING_PERIOD_S",
    "IDLE_TIMEOUT_S",
    "MAX_CLIENTS",
    "TURN_LINES",
    "TURN_REPLY_BYTES",
    "UNGREETED_TURN_LINES",
    "Client",
    "Daemon",
    "HistoryRecorder",
    "HistoryWorker",
    "SocketInUse",
    "acquire_socket_lock",
]

log = logging.getLogger("hw")

STATUS_PERIOD_S = 0.05
ENGINE_PERIOD_S = 0.02
ENGINE_LATE_S = 0.1  # an engine tick later than this is logged (the loop's heartbeat bound: 250 ms)
RT_LOST_EXIT_S = 1.0  # the real-time process lost: clients see the fault this long, then exit 1


HOUSEKEEPING_PERIOD_S = 0.5
# The engine's ``post`` event carries the self-test's step figures: they go to the history's event
# log and the result to ``status.post``, not to every client (docs/protocol.md, self_test).
NOT_BROADCAST = frozenset({"post"})


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
        self.engine = Engine(
            cfg,
            self.loop,
            self.recorder,
            clock.now,
            today=today,
            emit=self._emit,
            require_screening=self.board.sim is None,  # a real board: no start without a check
        )
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
        self._paced = False
        # The fair service (hw/service/scheduler.py) picks the next request, Commands runs it.
        self.bulk = BulkGate(self._wake, self._call_later)
        self.commands = Commands(self)
        self.scheduler = FairScheduler(
            self.clients, self.commands.dispatch, self.bulk, self._wake, self._call_later
        )
        self._conn_log = RateLimitedLog()
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
        last_fault = self.worker.call(unacknowledged_fault)
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
            if self.lease_holder is not None and self.engine.state not in LEASED:
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
        make_room(self.clients, self.lease_holder, self._conn_log)
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

    def _call_later(self, delay_s: float, fn, *args) -> None:
        self._aio.call_later(delay_s, fn, *args)  # (the event loop of serve(), or a test's)

    def _paced_wake(self) -> None:
        self._paced = False
        self._wake()

    def _turn(self) -> str | None:
        """One turn of the fair service (hw.service.scheduler.FairScheduler.turn)."""
        return self.scheduler.turn()

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
        close_expired(self.clients, self.lease_holder, now, self._conn_log)

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
