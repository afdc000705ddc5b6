"""systemd notification (READY=1, WATCHDOG=1, STATUS=...) over $NOTIFY_SOCKET, injectable."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """Sends sd_notify datagrams. Without $NOTIFY_SOCKET (not under systemd) it does nothing."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.path = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            self.watchdog_s = None  # the watchdog is meant for another process
        self._sock: socket.socket | None = None
        self.sent: list[str] = []  # kept for tests and for the daemon's own status

    def notify(self, message: str) -> bool:
        self.sent.append(message)
        if len(self.sent) > 200:
            del self.sent[:100]
        if not self.path:
            return False
        addr = self.path
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), addr)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
