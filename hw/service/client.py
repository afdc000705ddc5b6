"""A small synchronous client of the daemon's socket (used by hw.tools.ctl, the kiosk and the
tests).

It sends requests, waits for the reply with the same id, and keeps the events and status lines
that arrive meanwhile in ``events`` (bounded) and ``last_status``.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import time
from typing import Any

from hw.service.protocol import PROTOCOL_VERSION


class DaemonError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    def __init__(
        self, path: str, name: str = "client", *, status: bool = False, timeout_s: float = 5.0
    ):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.sock.connect(str(path))
                break
            except BlockingIOError:
                # A full listen backlog (the daemon is busy accepting): with a timeout set,
                # AF_UNIX connect() answers EAGAIN at once instead of waiting. Wait ourselves.
                if time.monotonic() >= deadline:
                    self.sock.close()
                    raise TimeoutError(f"{path}: the daemon accepted no connection") from None
                time.sleep(0.01)
        self._buf = b""
        self._ids = itertools.count(1)
        self.events: collections.deque[dict] = collections.deque(maxlen=5000)
        self.last_status: dict | None = None
        self.hello = self.request("hello", protocol=PROTOCOL_VERSION, client=name, status=status)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self, timeout_s: float | None = None) -> dict | None:
        """The next message from the daemon (None on timeout)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 5.0)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if "event" in msg:
            if msg["event"] == "status":
                self.last_status = msg["data"]
            else:
                self.events.append(msg)
        return msg

    def request(self, cmd: str, timeout_s: float = 5.0, **args: Any) -> Any:
        req_id = next(self._ids)
        self.sock.sendall((json.dumps({"id": req_id, "cmd": cmd, "args": args}) + "\n").encode())
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.read_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise TimeoutError(f"no reply to {cmd} within {timeout_s} s")
            if msg.get("id") == req_id and "ok" in msg:
                if msg["ok"]:
                    return msg["result"]
                raise DaemonError(msg["error"]["code"], msg["error"]["message"])

    def wait_for(self, predicate, timeout_s: float, renew_lease: bool = False) -> dict | None:
        """Read until a status line satisfies ``predicate`` (renewing the lease if asked)."""
        deadline = time.monotonic() + timeout_s
        next_renew = 0.0
        while time.monotonic() < deadline:
            if renew_lease and time.monotonic() >= next_renew:
                self.request("lease")
                next_renew = time.monotonic() + 0.1
            self.read_message(0.05)
            if self.last_status is not None and predicate(self.last_status):
                return self.last_status
        return None
