"""The connection of ``python -m hw.ctl`` to the daemon: hw.service.client.Client with a lost
daemon kept apart from a closed stdout, and a clear error when the socket cannot be reached."""

from __future__ import annotations

import os
from typing import Any

from hw.service.client import Client


class CannotConnect(Exception):
    pass


class DaemonGone(Exception):
    """The daemon closed the connection (kept apart from a closed stdout)."""


class CtlClient(Client):
    """hw.service.client.Client, with a lost daemon kept apart from a closed stdout (both would be a
    ConnectionError: BrokenPipeError is one)."""

    def read_message(self, timeout_s: float | None = None) -> dict | None:
        try:
            return super().read_message(timeout_s)
        except ConnectionError as e:
            raise DaemonGone(str(e)) from None

    def request(self, cmd: str, timeout_s: float = 5.0, **args: Any) -> Any:
        try:
            return super().request(cmd, timeout_s, **args)
        except ConnectionError as e:
            raise DaemonGone(str(e)) from None


def connect(path: str, *, status: bool = False) -> Client:
    try:
        return CtlClient(path, f"ctl-{os.getpid()}", status=status)
    except PermissionError as e:
        raise CannotConnect(
            f"cannot connect to the hw daemon at {path}: {e.strerror}. The socket is for the "
            "daemon's group (mck): run as a member of it, or with sudo."
        ) from None
    except (OSError, DaemonGone) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise CannotConnect(
            f"cannot connect to the hw daemon at {path}: {why}. Is it running? "
            "Try: systemctl status microcurrent-hw (another socket: --socket PATH or $MCK_SOCKET)"
        ) from None
