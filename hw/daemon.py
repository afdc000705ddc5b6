"""The hardware daemon: ``python -m hw [--config PATH] [--sim] [--socket PATH] [--state-dir DIR]``.

Threads, and what each may touch:

- ``current-loop`` (real-time): the ControlLoop; the only thread that drives SPI in normal use.
- ``loop-supervisor``: trips when the loop stalls; its health view gates the systemd watchdog.
- ``service`` (asyncio, this module): the Unix socket, the treatment engine at 50 Hz, the status
  stream at 20 Hz, sd_notify. It never blocks: history goes through the history worker.
- ``history``: the only thread that opens the SQLite database.

Start-up: config (a bad one exits with code 2 before any hardware is touched), board (output
enable low at construction), history (damaged files set aside; interrupted treatments closed and
latched as a fault to acknowledge), loop and supervisor, self-test, READY=1. Nothing resumes a
treatment after a restart. SIGTERM/SIGINT cut the output (a trip if it was on) and exit with
the output off.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import datetime as _dt
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

from hw import protocol as P
from hw.board import Board, BoardUnavailable, build_board
from hw.boardfile import board_path_for
from hw.clock import MonotonicClock
from hw.config import Config, ConfigError, load_config
from hw.engine import Engine, EngineRefused, State
from hw.history import History, HistoryError, TreatmentSummary, ZoneSummary
from hw.loop import ACTIVE, CommandRefused, ControlLoop, LoopRunner, OutputState, Supervisor
from hw.safety import Fault, Guard

log = logging.getLogger("hw")

STATUS_PERIOD_S = 0.05
ENGINE_PERIOD_S = 0.02
CLIENT_BUFFER_LIMIT = 256 * 1024  # above this a client is too slow: it misses status lines
CLIENT_BUFFER_DROP = 2 * 1024 * 1024  # above this it is disconnected


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
class Client:
    _ids = 0

    def __init__(self, writer: asyncio.StreamWriter):
        Client._ids += 1
        self.n = Client._ids
        self.writer = writer
        self.name = "?"
        self.greeted = False
        self.want_status = False
        self.want_events = True
        self.dropped_status = 0

    def send(self, data: bytes, droppable: bool = False) -> None:
        w = self.writer
        if w.is_closing():
            return
        size = w.transport.get_write_buffer_size()
        if size > CLIENT_BUFFER_DROP:
            log.warning("client %d (%s) too slow: disconnected", self.n, self.name)
            w.close()
            return
        if droppable and size > CLIENT_BUFFER_LIMIT:
            self.dropped_status += 1
            return
        w.write(data)


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
    ):
        self.cfg = cfg
        self.board = board
        self.clock = clock
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.notifier = notifier
        self.guard = Guard(board, clock)
        self.loop = ControlLoop(cfg, board, clock, self.guard)
        self.runner = LoopRunner(self.loop)
        self.supervisor = Supervisor(self.loop, clock)
        self.worker = HistoryWorker(state_dir / "history.db")
        self.recorder = HistoryRecorder(self.worker, today)
        self.engine = Engine(cfg, self.loop, self.recorder, clock.now, today=today, emit=self._emit)
        self.clients: set[Client] = set()
        self.lease_holder: Client | None = None
        self.service_tasks: dict[str, asyncio.Task] = {}  # long-lived tasks under supervision
        self.service_failure: str | None = None  # set once one failed: no more watchdog pings
        self._aio: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
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
            self.engine.self_test()

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
            log.info("EVENT %s %s", name, data)
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
        while True:
            await asyncio.sleep(ENGINE_PERIOD_S)
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
            if self.supervisor.healthy() and self.services_alive():
                self.notifier.watchdog()

    # ---------------------------------------------------------------- socket
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Client(writer)
        self.clients.add(client)
        buf = b""
        discarding = False
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > P.MAX_LINE_BYTES:
                            if not discarding:
                                client.send(
                                    P.reply_error(
                                        None,
                                        P.TOO_LARGE,
                                        f"a request may be at most {P.MAX_LINE_BYTES} bytes",
                                    )
                                )
                            discarding = True
                            buf = b""
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if discarding:
                        discarding = False  # the rest of an oversized line
                        continue
                    if not line.strip():
                        continue
                    self._dispatch(client, line)
                    if writer.is_closing():
                        return
                # Back-pressure for a client that floods requests faster than it reads replies.
                if writer.transport.get_write_buffer_size() < CLIENT_BUFFER_LIMIT:
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.clients.discard(client)
            if self.lease_holder is client:
                self.lease_holder = None
                self.engine.cancel_pending_start()  # its self-test may still be running
                if self.loop.state in ACTIVE and self.loop.state != OutputState.RAMP_DOWN:
                    # The controlling client is gone: its lease cannot be renewed, cut now.
                    log.warning("controller %s disconnected during output", client.name)
                    self.guard.trip(Fault.LEASE_EXPIRED, f"controller {client.name} disconnected")
            writer.close()

    def _dispatch(self, client: Client, line: bytes) -> None:
        t_rx = time.monotonic()
        try:
            req = P.parse_request(line)
        except P.ProtocolError as e:
            client.send(P.reply_error(e.req_id, e.code, e.message))
            return
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
        if isinstance(result, asyncio.Future):

            def done(f: asyncio.Future) -> None:
                e = f.exception()
                if e is None:
                    client.send(P.reply_ok(req.id, f.result()))
                elif isinstance(e, (EngineRefused, CommandRefused)):  # a deferred start's refusal
                    client.send(P.reply_error(req.id, P.REFUSED, str(e)))
                elif isinstance(e, LookupError):
                    client.send(P.reply_error(req.id, P.NOT_FOUND, str(e).strip("'\"")))
                else:
                    client.send(P.reply_error(req.id, P.INTERNAL, type(e).__name__))

            result.add_done_callback(done)
        else:
            client.send(P.reply_ok(req.id, result))

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
            self._aio.call_soon(client.writer.close)
            return {}
        if cmd == "status":
            return self.status()
        if cmd == "programs":
            return {"programs": [_program_dict(p) for p in self.cfg.programs]}
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
        return self._history_command(cmd, a)

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

        self.loop._queue(mark)

    def _history_command(self, cmd: str, a: dict):
        w = self.worker
        if cmd == "history":
            limit = a.get("limit", 20)
            fut = w.submit(lambda h: [_record_dict(r) for r in h.recent(limit)])
        elif cmd == "treatment":
            tid = a["id"]

            def one(h):
                r = h.treatment(tid)
                if r is None:
                    raise LookupError(f"no treatment {tid}")
                return _record_dict(r)

            fut = w.submit(one)
        elif cmd == "totals":
            today = self.recorder.today()
            fut = w.submit(
                lambda h: {
                    **h.totals(),
                    "streak_days": h.streak_days(today),
                    "today_active_s": h.active_s_on(today),
                    "daily_max_s": self.cfg.limits.daily_max_s,
                }
            )
        elif cmd == "events":
            since, limit = a.get("since_id"), a.get("limit", 100)
            fut = w.submit(lambda h: [e.__dict__ for e in h.events(limit, since)])
        elif cmd == "export_csv":
            zones = a.get("what") == "zones"

            def export(h):
                f = io.StringIO()
                (h.export_zones_csv if zones else h.export_csv)(f)
                return {"csv": f.getvalue()}

            fut = w.submit(export)
        else:
            raise P.ProtocolError(P.UNKNOWN_COMMAND, cmd)
        return asyncio.wrap_future(fut, loop=self._aio)

    # ---------------------------------------------------------------- run
    async def serve(self, ready: threading.Event | None = None) -> None:
        """Serve until request_stop(); sets ``ready`` once the self-test is over."""
        self._aio = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
            path.unlink()  # a stale socket from a previous run
        server = await asyncio.start_unix_server(self._handle, path=str(path), limit=2**16)
        os.chmod(path, 0o660)
        tasks = [
            asyncio.create_task(t())
            for t in (self._status_task, self._engine_task, self._watchdog_task)
        ]
        # READY once the self-test has finished (or a latched fault is being shown).
        while (
            self.engine.state == State.SELF_TEST
            or self.engine.state == State.IDLE
            and (not self.guard.tripped and self.loop.post_result is None)
        ):
            await asyncio.sleep(0.01)
        st = self.status()
        self.notifier.ready(f"{st['state']}")
        log.info("READY state=%s post=%s socket=%s", st["state"], st["post"], path)
        if ready is not None:
            ready.set()
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        server.close()
        for c in list(self.clients):
            c.writer.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def request_stop(self) -> None:
        if self._aio is not None and self._stop is not None:
            self._aio.call_soon_threadsafe(self._stop.set)

    def shutdown(self) -> None:
        """Output off whatever state we are in, then release everything."""
        self.notifier.stopping()
        if self.loop.state in ACTIVE:
            self.guard.trip(Fault.SHUTDOWN, "daemon stopping")
        self.engine.tick()  # records the end of a treatment cut by the shutdown
        self.runner.stop()
        self.supervisor.stop()
        self.board.close()
        self.worker.stop()
        log.info("STOPPED output off")


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
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from hw.notify import Notifier

    notifier = Notifier()
    try:
        cfg = load_config(args.config, board_path=board_path_for(args.board, sim=args.sim))
    except ConfigError as e:
        for p in e.problems:
            log.error("CONFIG %s", p)
        log.error("CONFIG invalid: no output; fix the file(s) named above")
        notifier.status("config error: no output")
        return 2
    clock = MonotonicClock()
    try:
        board = build_board(cfg, sim=args.sim, clock=clock)
    except BoardUnavailable as e:
        log.error("BOARD %s", e)
        return 3
    state_dir = Path(args.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        board.close()
        log.error("STATE cannot use %s: %s", state_dir, e)
        return 4
    if args.sim and args.sim_mirror:
        board.sim.attach_mirror(args.sim_mirror)
    daemon = Daemon(cfg, board, clock, Path(args.socket), state_dir, notifier)

    def on_signal(signum, _frame) -> None:
        log.info("SIGNAL %s: output off, stopping", signal.Signals(signum).name)
        if daemon.loop.state in ACTIVE:
            daemon.guard.trip(Fault.SHUTDOWN, f"signal {signal.Signals(signum).name}")
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
    return 0
