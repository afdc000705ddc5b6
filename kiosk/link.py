"""The kiosk's connection to the hw daemon, on its own threads.

One reader thread connects, greets (``hello`` with the status stream), reads every line and
reconnects with backoff; one writer thread sends queued requests. Nothing here blocks the caller:
``request`` queues a line and returns a :class:`Reply` at once. Every reply, event, connect and
disconnect is handed to ``post`` (the UI thread's ``Clock.schedule_once`` by default), so the
view-model only ever runs on the UI thread.
"""

from __future__ import annotations

import itertools
import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

PROTOCOL_VERSION = 1  # docs/protocol.md; the kiosk does not import hw (it only talks to it)
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # reconnect delays; the last one repeats
DEFAULT_TIMEOUT_S = 3.0
TICK_S = 0.05  # how often the reader checks request deadlines


def clock_post(fn: Callable[[], None]) -> None:
    """Run ``fn`` on the Kivy UI thread at the next frame."""
    from kivy.clock import Clock

    Clock.schedule_once(lambda _dt: fn(), 0)


class Reply:
    """One request's outcome: ``ok`` and ``result``, or ``error`` {code, message}.

    ``callback(reply)`` runs on the UI thread (through ``post``) once it is known: a daemon reply,
    a timeout (code ``TIMEOUT``) or a lost connection (code ``DISCONNECTED``)."""

    def __init__(self, cmd: str, timeout_s: float, callback: Callable | None):
        self.cmd = cmd
        self.deadline = time.monotonic() + timeout_s
        self.callback = callback
        self.done = threading.Event()
        self.ok: bool | None = None
        self.result: Any = None
        self.error: dict | None = None
        self.done_s: float | None = None  # time.monotonic() when the outcome was known (bench)

    def __repr__(self) -> str:
        return f"Reply({self.cmd}, ok={self.ok}, result={self.result!r}, error={self.error!r})"


class Link:
    """A daemon connection on its own threads.

    ``on_connected(hello_result)``, ``on_disconnected(reason)`` and ``on_message(msg)`` (events,
    including ``status``) are called through ``post``. ``connect`` (path -> socket) is injectable
    for tests."""

    def __init__(
        self,
        path: str,
        name: str = "kiosk",
        *,
        post: Callable[[Callable[[], None]], None] = clock_post,
        on_connected: Callable[[dict], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        on_message: Callable[[dict], None] | None = None,
        backoff_s: tuple[float, ...] = BACKOFF_S,
    ):
        self.path = path
        self.name = name
        self.post = post
        self.on_connected = on_connected or (lambda _h: None)
        self.on_disconnected = on_disconnected or (lambda _r: None)
        self.on_message = on_message or (lambda _m: None)
        self.backoff_s = backoff_s
        self._ids = itertools.count(1)
        self._pending: dict[int, Reply] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._out: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connected = False
        self.attempts = 0  # connection attempts since the last success (for the UI)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> Link:
        for target, name in ((self._read_loop, "kiosk-link-rx"), (self._write_loop, "kiosk-tx")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._out.put(None)
        self._drop_socket()
        for t in self._threads:
            t.join(timeout_s)

    # ------------------------------------------------------------------ requests
    def request(
        self,
        cmd: str,
        args: dict | None = None,
        *,
        callback: Callable[[Reply], None] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Reply:
        """Queue one request; never blocks. The outcome arrives in ``callback`` (UI thread)."""
        req_id = next(self._ids)
        reply = Reply(cmd, timeout_s, callback)
        line = json.dumps({"id": req_id, "cmd": cmd, "args": args or {}}) + "\n"
        with self._lock:
            if self._sock is None:
                sock = None
            else:
                sock = self._sock
                self._pending[req_id] = reply
        if sock is None:
            self._finish(reply, False, None, {"code": "DISCONNECTED", "message": "no connection"})
        else:
            self._out.put((sock, line.encode()))
        return reply

    # ------------------------------------------------------------------ internals
    def _finish(self, reply: Reply, ok: bool, result: Any, error: dict | None) -> None:
        if reply.done.is_set():
            return
        reply.ok, reply.result, reply.error = ok, result, error
        reply.done_s = time.monotonic()
        reply.done.set()
        if reply.callback is not None:
            cb = reply.callback
            self.post(lambda: cb(reply))

    def _drop_socket(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            pending, self._pending = self._pending, {}
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for r in pending.values():
            self._finish(r, False, None, {"code": "DISCONNECTED", "message": "connection lost"})

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            item = self._out.get()
            if item is None:
                return
            sock, data = item
            try:
                sock.sendall(data)
            except OSError:
                pass  # the reader sees the broken connection and fails the pending replies

    def _connect(self) -> tuple[socket.socket, bytes, dict]:
        """Connect and greet (blocking, on the reader thread). Returns (socket, rest, hello)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEFAULT_TIMEOUT_S)
        try:
            sock.connect(self.path)
            hello = {
                "id": 0,
                "cmd": "hello",
                "args": {"protocol": PROTOCOL_VERSION, "client": self.name, "status": True},
            }
            sock.sendall((json.dumps(hello) + "\n").encode())
            buf = b""
            while True:
                while b"\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the daemon closed the connection during hello")
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("id") == 0 and "ok" in msg:
                    if not msg["ok"]:
                        err = msg["error"]
                        raise ConnectionError(f"hello refused: {err['code']} {err['message']}")
                    sock.settimeout(TICK_S)
                    return sock, buf, msg["result"]
        except BaseException:
            sock.close()
            raise

    def _read_loop(self) -> None:
        delay_i = 0
        while not self._stop.is_set():
            try:
                sock, buf, hello = self._connect()
            except (OSError, ValueError, ConnectionError) as e:
                self.attempts += 1
                if self.attempts == 1 or self.connected:
                    self.post(lambda r=str(e): self.on_disconnected(r))
                self.connected = False
                self._stop.wait(self.backoff_s[min(delay_i, len(self.backoff_s) - 1)])
                delay_i += 1
                continue
            delay_i, self.attempts = 0, 0
            with self._lock:
                self._sock = sock
            self.connected = True
            self.post(lambda h=hello: self.on_connected(h))
            reason = self._serve(sock, buf)
            self._drop_socket()
            self.connected = False
            if not self._stop.is_set():
                self.post(lambda r=reason: self.on_disconnected(r))

    def _serve(self, sock: socket.socket, buf: bytes) -> str:
        while not self._stop.is_set():
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self._dispatch(line)
            self._expire()
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                return f"connection error: {e}"
            if not chunk:
                return "the daemon closed the connection"
            buf += chunk
        return "closed"

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return  # a daemon never sends this; nothing sensible to do with it
        if not isinstance(msg, dict):
            return
        if "event" in msg:
            self.post(lambda m=msg: self.on_message(m))
            return
        with self._lock:
            reply = self._pending.pop(msg.get("id"), None)
        if reply is not None:
            self._finish(reply, bool(msg.get("ok")), msg.get("result"), msg.get("error"))

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [i for i, r in self._pending.items() if r.deadline <= now]
            replies = [self._pending.pop(i) for i in late]
        for r in replies:
            self._finish(r, False, None, {"code": "TIMEOUT", "message": f"no reply to {r.cmd}"})


def connect_view_model(vm, path: str, name: str = "kiosk", **link_kw) -> Link:
    """A ``Link`` to the daemon at ``path`` that reports to ``vm`` (``on_link_connected``,
    ``on_link_disconnected``, ``on_link_message``) and is the view-model's link. Not started."""
    link = Link(
        path,
        name,
        on_connected=vm.on_link_connected,
        on_disconnected=vm.on_link_disconnected,
        on_message=vm.on_link_message,
        **link_kw,
    )
    vm.link = link
    return link
