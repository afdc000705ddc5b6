"""The service's side of the real-time process: spawn it, and stand in for its loop.

:func:`spawn_realtime` starts ``python -m hw.control.rt`` over a SOCK_SEQPACKET socketpair
(hw/control/channel.py) and waits for its hello (the config digest must match the service's own).
:class:`LoopProxy` then gives the engine and the daemon what a ControlLoop, its Guard, its board,
its LoopRunner and its Supervisor gave them in one process: ``start``/``stop``/``set_target``/...
raise :class:`~hw.control.loop.CommandRefused` as before (each waits for the real-time process's
answer, normally within one tick; ``REPLY_TIMEOUT_S`` at most), and ``state``, ``snapshot``,
``contact``, ``post_result``, ``guard.fault``/``alarm``/``post_valid``/``tripped`` follow the
messages it publishes. Everything runs on the service's thread: :meth:`LoopProxy.poll` drains the
channel (the asyncio loop calls it when the socket is readable; a command waiting for its reply
calls it).

The real-time process is lost (EOF, a malformed message, no answer in time, no state for
``RT_SILENT_S``, or its exit): the proxy latches INTERNAL locally, SIGKILLs the process if it still
runs (the dead-man then opens the relay) and calls ``on_lost`` (the daemon reports it, stops the
watchdog pings and exits non-zero, so systemd restarts the whole unit).
"""

from __future__ import annotations

import collections
import math
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from hw.control import channel as C
from hw.control.channel import Cmd
from hw.control.loop import CommandRefused, OutputState, Snapshot
from hw.safety import Fault
from hw.service.rtmirror import MirrorMixin
from hw.service.rtstandins import BoardProxy, GuardProxy

HELLO_TIMEOUT_S = 20.0  # a cold start of the interpreter, the config and the board
REPLY_TIMEOUT_S = 0.5  # a real-time process that does not answer in this is lost
RT_SILENT_S = 1.0  # ...and one that publishes no state for this long
STOP_TIMEOUT_S = 3.0  # SHUTDOWN until the process has exited (then SIGKILL)
CHANNEL_BUFFER_BYTES = 1 << 20


class RealtimeUnavailable(RuntimeError):
    """The real-time process did not come up; ``exit_code`` is what the daemon should exit with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class LoopProxy(MirrorMixin):
    """The ControlLoop (and its runner, supervisor, guard, board) of the real-time process."""

    def __init__(
        self,
        cfg,
        sock: socket.socket,
        proc: subprocess.Popen | None,
        *,
        sim: bool,
        wait: Callable[[float], None] | None = None,
    ):
        """``wait(timeout_s)`` waits for the channel to be readable (default: select); a test
        passes one that runs a simulated real-time side instead."""
        self.cfg = cfg
        self._wait = wait or (lambda t: select.select([sock], [], [], t))
        self.sock = sock
        self.proc = proc
        self.guard = GuardProxy(self)
        self.board = BoardProxy(self, sim)
        self.on_lost: Callable[[str], None] | None = None
        self.state = OutputState.OFF
        self.contact = True
        self.snapshot: Snapshot | None = None
        self.post_result: dict | None = None
        self._post_steps: list[dict] = []  # the steps of the self-test whose verdict is next
        self.service_beat_max_s = min(
            cfg.loop.service_heartbeat_ms / 1000.0, cfg.limits.lease_ms / 1000.0
        )
        self.service_beat_s: float | None = None
        self.lost: str | None = None
        self.stopping = False
        self.rt_pid: int | None = None
        self.sched_note = ""
        self.tick_s = 1.0 / cfg.loop.rate_hz
        self.rt_healthy = False
        self.rt_now_s = time.monotonic()  # the RT clock in its last state (CLOCK_MONOTONIC)
        self.last_reply_t_s = 0.0  # when the RT answered the last command (CLOCK_MONOTONIC)
        self.pub_seq = 0
        self.state_age_ms: collections.deque[float] = collections.deque(maxlen=20000)
        self.reply_rtt_ms: collections.deque[float] = collections.deque(maxlen=20000)
        self._seq = 0
        self._replies: dict[int, C.Reply] = {}
        self._listeners: list[Callable[[float, str, dict], None]] = []
        self._digest = b""
        self._late_hist: tuple[int, ...] = ()  # the runner's timing histograms (HIST messages)
        self._gap_hist: tuple[int, ...] = ()

    # ------------------------------------------------------------------ the channel
    def _send(self, cmd: Cmd, a=0.0, b=0.0, c=0.0, d=0.0, *, flag=0, text="") -> int:
        if self.lost:
            return 0
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            self.sock.send(C.command(cmd, self._seq, a, b, c, d, flag=flag, text=text))
        except BlockingIOError:
            self._lose("the real-time process does not read its channel")
        except OSError as e:
            self._lose(f"the channel failed ({e})")
        return self._seq

    def _call(self, cmd: Cmd, a=0.0, b=0.0, c=0.0, d=0.0, *, flag=0, text="") -> str:
        """Send a command and wait for its answer; the reply's text, or CommandRefused."""
        if self.lost:
            raise CommandRefused(f"the real-time process is gone ({self.lost})")
        t0 = time.monotonic()
        seq = self._send(cmd, a, b, c, d, flag=flag, text=text)
        deadline = t0 + REPLY_TIMEOUT_S
        while seq not in self._replies and not self.lost:
            left = deadline - time.monotonic()
            if left <= 0:
                self.poll()  # (this thread may have been off the CPU past the deadline)
                if seq not in self._replies:
                    self._lose(f"no answer to {cmd.name} within {REPLY_TIMEOUT_S * 1000:.0f} ms")
                break
            self._wait(left)
            self.poll()
        if self.lost:
            raise CommandRefused(f"the real-time process is gone ({self.lost})")
        r = self._replies.pop(seq)
        self.reply_rtt_ms.append((time.monotonic() - t0) * 1000.0)
        self.last_reply_t_s = r.t_s
        if not r.ok:
            raise CommandRefused(r.text)
        return r.text

    def poll(self, max_messages: int = 10000) -> None:
        """Handle what the real-time process has sent (never blocks)."""
        for _ in range(max_messages):
            if self.lost:
                return
            try:
                buf = self.sock.recv(C.MAX_SIZE + 1, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                return self._lose(f"the channel failed ({e})")
            if not buf:
                return self._lose(self._ended())
            try:
                msg = C.decode(buf)
            except C.ChannelError as e:
                return self._lose(f"malformed message from the real-time process: {e}")
            self._handle(msg)

    def _ended(self) -> str:
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        return "the real-time process ended" + (f" (exit {code})" if code is not None else "")

    def _lose(self, why: str) -> None:
        if self.lost:
            return
        self.lost = why
        self.state = OutputState.TRIPPED
        self.rt_healthy = False
        self.guard._local(Fault.INTERNAL, f"real-time process lost: {why}")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a half-dead process must not drive: the dead-man opens the relay
        if self.on_lost is not None:
            self.on_lost(why)

    # ------------------------------------------------------------------ health
    def check(self) -> None:
        """Periodic (the service's engine task): drain, then is the process alive and publishing?"""
        self.poll()
        if self.lost:
            return
        if self.proc is not None and self.proc.poll() is not None:
            return self._lose(f"the real-time process ended (exit {self.proc.returncode})")
        silent_s = time.monotonic() - self.rt_now_s
        if silent_s > RT_SILENT_S:
            self._lose(f"no state from the real-time process for {silent_s * 1000:.0f} ms")

    def healthy(self) -> bool:
        """The Supervisor's view, from the RT: loop ticks, ADC answers, supervisor runs; and the
        last state is recent."""
        return not self.lost and self.rt_healthy and time.monotonic() - self.rt_now_s <= RT_SILENT_S

    # ------------------------------------------------------------------ ControlLoop's commands
    def start(self, spec, target_ua, *, max_output_s=None, resume=False) -> None:
        if not isinstance(target_ua, int | float) or isinstance(target_ua, bool):
            raise CommandRefused("target_ua must be a number")
        limit = math.nan if max_output_s is None else float(max_output_s)
        self._call(
            Cmd.START,
            spec.frequency_hz,
            spec.pulse_width_ms,
            float(target_ua),
            limit,
            flag=1 if resume else 0,
        )

    def start_blocker(self) -> str | None:
        try:
            self._call(Cmd.BLOCKER)
        except CommandRefused as e:
            return str(e)
        return None

    def set_target(self, target_ua: float) -> None:
        if not isinstance(target_ua, int | float) or isinstance(target_ua, bool):
            raise CommandRefused("target_ua must be a number")
        self._call(Cmd.SET_TARGET, float(target_ua))

    def set_waveform(self, spec) -> None:
        self._call(Cmd.SET_WAVEFORM, spec.frequency_hz, spec.pulse_width_ms)

    def stop(self) -> None:
        self._call(Cmd.STOP)

    def renew_lease(self) -> None:
        self._send(Cmd.RENEW_LEASE)  # at once, unanswered: the lease lives in the RT process

    def service_beat(self) -> None:
        self.service_beat_s = time.monotonic()
        self._send(Cmd.BEAT)

    def estop(self, detail: str = "on-screen STOP") -> None:
        try:
            self._call(Cmd.ESTOP, text=detail)
        except CommandRefused:
            pass  # lost: latched here, and the dead-man opens the relay

    def run_post(self) -> None:
        self._call(Cmd.RUN_POST)
        self.post_result = None

    def acknowledge(self) -> None:
        self._call(Cmd.ACKNOWLEDGE)

    def add_event_listener(self, fn: Callable[[float, str, dict], None]) -> None:
        self._listeners.append(fn)

    def trip_nowait(self, code: Fault, detail: str) -> None:
        """A trip from a signal handler: sent at once, not waited for."""
        self._send(Cmd.TRIP, C.FAULTS.index(code), text=detail)

    # ------------------------------------------------------------------ runner / supervisor roles
    def start_runner(self) -> None:
        """(The process already runs.)"""

    def shutdown(self) -> int | None:
        """Output off (a trip there if it was on), the process ends; its exit code."""
        self.stopping = True
        if not self.lost:
            try:
                self._call(Cmd.SHUTDOWN, text="daemon stopping")
            except CommandRefused:
                pass
        if self.proc is None:
            return None
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(2.0)
        finally:
            self.sock.close()

    def wait_hello(self, digest: bytes, timeout_s: float = HELLO_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.rt_pid is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.lost:
                code = self.proc.poll() if self.proc is not None else None
                if self.proc is not None and code is None:
                    self.proc.kill()
                    self.proc.wait(2.0)
                raise RealtimeUnavailable(
                    f"the real-time process did not start ({self.lost or 'no hello'})",
                    code if code in (2, 3) else 3,
                )
            select.select([self.sock], [], [], min(left, 0.1))
            self.poll()
        if self._digest != digest:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait(2.0)
            raise RealtimeUnavailable(
                "the real-time process loaded a different configuration; not starting", 2
            )


def spawn_realtime(
    cfg,
    *,
    site_config: str | None,
    board_path: str | None,
    sim: bool,
    sim_mirror: str | None = None,
    keep_fds: tuple[int, ...] = (),
    sim_time: bool = False,
) -> LoopProxy:
    """Start ``python -m hw.control.rt`` and return its proxy once it said hello with ``cfg``'s
    digest. ``keep_fds`` (the socket lock) stay open in it: a new daemon cannot start while it
    lives."""
    from hw.control.rt import config_digest

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s, opt in ((theirs, socket.SO_SNDBUF), (mine, socket.SO_RCVBUF)):
        # Room for about a second of states and events while the service is busy (the kernel
        # caps it at net.core.[rw]mem_max); what does not fit is dropped and counted there.
        s.setsockopt(socket.SOL_SOCKET, opt, CHANNEL_BUFFER_BYTES)
    argv = [sys.executable, "-m", "hw.control.rt", "--channel-fd", str(theirs.fileno())]
    argv += ["--parent-pid", str(os.getpid())]
    if site_config:
        argv += ["--config", str(site_config)]
    if board_path:
        argv += ["--board", str(board_path)]
    if sim:
        argv.append("--sim")
        if sim_mirror:
            argv += ["--sim-mirror", str(sim_mirror)]
        if sim_time:
            argv.append("--sim-time")
    try:
        # Its own session: a terminal's Ctrl-C reaches the service, which stops it in order.
        proc = subprocess.Popen(
            argv,
            pass_fds=(theirs.fileno(), *keep_fds),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        theirs.close()
    proxy = LoopProxy(cfg, mine, proc, sim=sim)
    proxy.wait_hello(config_digest(cfg))
    return proxy
