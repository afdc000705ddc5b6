"""The real-time process: ``python -m hw.control.rt --channel-fd N [--sim] [--config P]
[--board P]``.

Started by the service (``python -m hw``, hw/service/main.py) as a fresh interpreter with one end
of a SOCK_SEQPACKET socketpair (hw/control/channel.py). It holds the board (SPI + GPIO, or the
simulated board with its pin mirror), the Guard, the ControlLoop on its SCHED_FIFO LoopRunner thread
and the Supervisor, and nothing else: no asyncio, no JSON, no SQLite, no client socket, no other
thread.

The channel is served on the loop's own thread, by the runner's hooks: before each tick at most
``MAX_MESSAGES_PER_TICK`` commands are taken (non-blocking) and handed to the loop, which checks
them as it always did; after the tick the loop's events, new faults, a self-test result, the
state (every ``ControlLoop.SNAPSHOT_EVERY`` ticks, and before every reply) and the replies go out
(non-blocking; a full channel drops what does not fit and counts it).

Who cuts when the other half goes:
- the service dies: the channel reads EOF (at once, in any state): trip INTERNAL, exit 1;
- the service hangs while output is on: the loop's own service-heartbeat check (``BEAT``
  messages, ``loop.service_heartbeat_ms``) trips INTERNAL;
- a malformed message: trip INTERNAL naming what was wrong (the process stays, latched);
- PR_SET_PDEATHSIG (SIGUSR2) is the backstop for the same; SIGTERM cuts and exits like
  ``SHUTDOWN``.
Exit codes: 0 after SHUTDOWN or SIGTERM, 1 service lost, 2 bad config, 3 no board.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from hw.control import channel as C
from hw.control.channel import Cmd
from hw.journal import setup_logging

log = logging.getLogger("hw.control.rt")

MAX_MESSAGES_PER_TICK = 8  # commands taken per tick: bounds the tick's channel work
HIST_EVERY_TICKS = 1000  # the runner's timing histograms go to the service twice a second
_PR_SET_PDEATHSIG = 1


def config_digest(cfg) -> bytes:
    """sha256 of the validated config (both processes must run the same limits)."""
    return hashlib.sha256(cfg.model_dump_json().encode("utf-8")).digest()


class RtServer:
    """The real-time side of the channel, run from the LoopRunner's hooks (the loop's thread)."""

    def __init__(self, sock: socket.socket, loop, supervisor, board):
        self.sock = sock
        self.loop = loop
        self.supervisor = supervisor
        self.board = board
        self.guard = loop.guard
        self.stop = threading.Event()  # set when the process should end
        self.wake: Callable[[], None] = lambda: None  # wakes the main thread after stop is set
        self.exit_code = 0
        self.why = ""
        self.dropped = 0  # messages a full channel could not take
        self._events: collections.deque = collections.deque(maxlen=1000)
        self._replies: list[bytes] = []
        self._n = 0
        self._pub = 0
        self._sent_fault = self._sent_alarm = self._sent_post = None
        self._last_state = None
        self._last_tripped = None
        self._every = loop.SNAPSHOT_EVERY
        self.hists = None  # (lateness, gap) TickHistograms of the runner, sent as HIST messages
        loop.add_event_listener(self._on_event)

    # ------------------------------------------------------------------ hooks
    def before_tick(self) -> None:
        for _ in range(MAX_MESSAGES_PER_TICK):
            try:
                buf = self.sock.recv(C.MAX_SIZE + 1, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ECONNRESET: it died with our messages unread
                return self._service_lost(f"the service ended (channel: {e.strerror or e})")
            if not buf:
                return self._service_lost("the service ended (channel closed)")
            try:
                msg = C.decode(buf)
                if not isinstance(msg, C.Command):
                    raise C.ChannelError(f"{type(msg).__name__} is not a command")
            except C.ChannelError as e:
                self.guard.trip(C.Fault.INTERNAL, f"malformed message from the service: {e}")
                continue
            self._apply(msg)

    def after_tick(self) -> None:
        loop, g = self.loop, self.guard
        self._n += 1
        for record, alarm in ((g.fault, False), (g.alarm, True)):
            sent = self._sent_alarm if alarm else self._sent_fault
            if record is not sent:
                if alarm:
                    self._sent_alarm = record
                else:
                    self._sent_fault = record
                if record is not None:
                    self._send(C.fault(record, alarm=alarm))
        pr = loop.post_result
        if pr is not self._sent_post:
            self._sent_post = pr
            if pr is not None:
                # Each step with its figures first (the service area shows them), then the verdict.
                t = loop.clock.now()
                for step in pr.get("steps", ()):
                    name = str(step.get("step", "?"))
                    self._send(C.event(t, "post_step", code=name, text=_figures(step)))
                self._send(
                    C.post(
                        bool(pr.get("passed")), pr.get("failed_step") or "", pr.get("reason", "")
                    )
                )
        while self._events:
            self._send(self._event_msg(*self._events.popleft()))
        tripped = g.tripped
        if (
            self._replies
            or self._n % self._every == 0
            or loop.state is not self._last_state
            or tripped is not self._last_tripped
        ):
            self._last_state, self._last_tripped = loop.state, tripped
            self._pub += 1
            now = time.monotonic()
            self._send(C.state(loop, now, self._pub, self.supervisor.healthy()))
        if self._replies:
            for r in self._replies:
                self._send(r)
            self._replies.clear()
        if self._n % HIST_EVERY_TICKS == 0 and self.hists is not None:
            late, gap = self.hists
            self._send(C.hist(late.counts, gap.counts))

    # ------------------------------------------------------------------ internals
    def _send(self, msg: bytes) -> None:
        try:
            self.sock.send(msg, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # the service does not read: its heartbeat will run out
        except OSError as e:
            self._service_lost(f"the service ended (channel: {e.strerror or e})")

    def _service_lost(self, why: str) -> None:
        if self.stop.is_set():
            return
        self.guard.trip(C.Fault.INTERNAL, why)
        self.why = why  # logged by the main thread (no file I/O on the loop's thread)
        self.exit_code = 1
        self.stop.set()
        self.wake()

    def _on_event(self, t: float, kind: str, data: dict) -> None:
        self._events.append((t, kind, data))  # any thread: only queue

    @staticmethod
    def _event_msg(t: float, kind: str, data: dict) -> bytes:
        if kind == "fault":
            return C.event(t, kind, code=data.get("code", ""), text=data.get("detail", ""))
        if kind == "post":
            return C.event(
                t,
                kind,
                1.0 if data.get("passed") else 0.0,
                data.get("step", ""),
                data.get("reason", ""),
            )
        num, text = 0.0, ""
        for v in data.values():
            if isinstance(v, int | float):
                num = float(v)
            elif isinstance(v, str):
                text = v
        return C.event(t, kind, num, text=text)

    def _apply(self, m: C.Command) -> None:
        from hw.control.loop import ACTIVE, CommandRefused
        from hw.control.waveform import WaveformSpec

        loop, c = self.loop, m.cmd
        if c == Cmd.BEAT:
            return loop.service_beat()
        if c == Cmd.RENEW_LEASE:
            return loop.renew_lease()
        if c == Cmd.BUZZER:
            buzzer = self.board.lines.buzzer
            return buzzer.on() if m.a else buzzer.off()
        text, ok = "", True
        try:
            if c == Cmd.START:
                limit = None if math.isnan(m.d) else m.d
                loop.start(WaveformSpec(m.a, m.b), m.c, max_output_s=limit, resume=bool(m.flag))
            elif c == Cmd.SET_TARGET:
                loop.set_target(m.a)
            elif c == Cmd.SET_WAVEFORM:
                loop.set_waveform(WaveformSpec(m.a, m.b))
            elif c == Cmd.STOP:
                loop.stop()
            elif c == Cmd.ESTOP:
                loop.estop(m.text)
            elif c == Cmd.RUN_POST:
                loop.run_post()
            elif c == Cmd.ACKNOWLEDGE:
                loop.acknowledge()
            elif c == Cmd.TRIP:
                if not (m.a == int(m.a) and 0 <= m.a < len(C.FAULTS)):
                    raise CommandRefused(f"no fault code {m.a}")
                self.guard.trip(C.FAULTS[int(m.a)], m.text)
            elif c == Cmd.BLOCKER:
                blocker = loop.start_blocker()
                if blocker:
                    raise CommandRefused(blocker)
            elif c in (Cmd.SIM_INJECT, Cmd.SIM_CLEAR, Cmd.SIM_SKIN):
                text = self._sim(c, m.text)
            elif c == Cmd.SHUTDOWN:
                if loop.state in ACTIVE:
                    self.guard.trip(C.Fault.SHUTDOWN, m.text or "daemon stopping")
                self.stop.set()
                self.wake()
        except CommandRefused as e:
            ok, text = False, str(e)
        except (ValueError, TypeError) as e:  # arguments the loop cannot take (a waveform)
            ok, text = False, f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - a bug: cut, and answer
            self.guard.trip(C.Fault.INTERNAL, f"command {c.name} failed: {type(e).__name__}")
            ok, text = False, f"internal error ({type(e).__name__})"
        self._replies.append(C.reply(m.seq, ok, time.monotonic(), text))

    def _sim(self, c: Cmd, name: str) -> str:
        from hw.control.loop import CommandRefused

        sim = self.board.sim
        if sim is None:
            raise CommandRefused("sim works only with the simulated board (--sim)")
        from hw.hal.sim.board import FAULTS, SKINS

        if c == Cmd.SIM_SKIN:
            if name not in SKINS:
                raise CommandRefused(f"unknown skin {name!r}")
            sim.set_skin(name)
        elif name not in FAULTS:
            raise CommandRefused(f"unknown sim fault {name!r}")
        elif c == Cmd.SIM_INJECT and name not in sim.active_faults:
            sim.inject(name)
        elif c == Cmd.SIM_CLEAR and name in sim.active_faults:
            sim.clear(name)
        return ",".join(sorted(sim.active_faults))


def _figures(step: dict) -> str:
    """A self-test step's figures as ``name=value`` pairs (they fit one event's text)."""
    return " ".join(
        f"{k}={v!r}"
        for k, v in step.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
    )


def _pdeathsig() -> None:
    """Backstop: the kernel sends SIGUSR2 to this process when the service dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hw.control.rt", description="the real-time process"
    )
    ap.add_argument("--channel-fd", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument("--config")
    ap.add_argument("--board")
    ap.add_argument("--sim", action="store_true")
    ap.add_argument("--sim-mirror")
    ap.add_argument("--sim-time", action="store_true", help="(sim, tests) hw.clock.TickClock")
    args = ap.parse_args(argv)
    setup_logging(sys.stdout)  # <N> priority prefixes when stdout is the journal
    if args.sim_time and not args.sim:
        log.error("RT CONFIG --sim-time is for the simulated board only (--sim)")
        return 2
    _pdeathsig()
    if args.parent_pid and os.getppid() != args.parent_pid:
        log.error("RT the service is already gone; not starting")
        return 1
    sock = socket.socket(fileno=args.channel_fd)
    from hw.clock import MonotonicClock, TickClock
    from hw.config import ConfigError, load_config
    from hw.config.boardfile import board_path_for
    from hw.control.loop import ACTIVE, ControlLoop
    from hw.control.runner import LoopRunner
    from hw.hal.board import BoardUnavailable, build_board
    from hw.safety import Fault, Guard
    from hw.safety.supervisor import Supervisor

    try:
        cfg = load_config(args.config, board_path=board_path_for(args.board, sim=args.sim))
    except ConfigError as e:
        for p in e.problems:
            log.error("RT CONFIG %s", p)
        return 2
    # Real time, but for a test's simulated board: there, a pause of the host pauses the
    # simulated world too (hw.clock.TickClock), and the runner moves that clock.
    clock = TickClock() if args.sim_time else MonotonicClock()
    try:
        board = build_board(cfg, sim=args.sim, clock=clock)
    except BoardUnavailable as e:
        log.error("RT BOARD %s", e)
        return 3
    if args.sim and args.sim_mirror:
        board.sim.attach_mirror(args.sim_mirror)
    guard = Guard(board, clock)
    loop = ControlLoop(cfg, board, clock, guard)
    supervisor = Supervisor(loop, clock)
    server = RtServer(sock, loop, supervisor, board)
    runner = LoopRunner(
        loop,
        before_tick=server.before_tick,
        after_tick=server.after_tick,
        tick_clock=clock if args.sim_time else None,
    )
    server.hists = (runner.late_hist, runner.gap_hist)

    # The main thread waits in sigwait (no GIL, no periodic wake-up: a normal-priority thread
    # that wakes to poll could be preempted holding the GIL and stall the loop). The signals are
    # blocked in every thread (the mask is inherited), so only sigwait takes them; the loop's
    # thread wakes it with SIGUSR1 when the service is lost or asked for SHUTDOWN.
    waited = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    server.wake = lambda: os.kill(os.getpid(), signal.SIGUSR1)
    runner.start()
    supervisor.start()
    log.info("RT pid=%d loop %s", os.getpid(), runner.sched_note)
    sock.send(C.hello(os.getpid(), loop.tick_s, config_digest(cfg), runner.sched_note))
    try:
        while not server.stop.is_set():
            signum = signal.sigwait(waited)
            if signum == signal.SIGUSR2:  # PR_SET_PDEATHSIG: the service died
                server._service_lost("the service ended (its process died)")
            elif signum != signal.SIGUSR1:
                if loop.state in ACTIVE:
                    guard.trip(Fault.SHUTDOWN, f"real-time process: {signal.Signals(signum).name}")
                server.stop.set()
        if server.why:
            log.error("RT INTERNAL %s: output cut, exiting", server.why)
    finally:
        runner.stop()
        supervisor.stop()
        board.close()
        log.info(
            "RT STOPPED output off (exit %d; %d message(s) dropped)",
            server.exit_code,
            server.dropped,
        )
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
