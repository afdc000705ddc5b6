"""The socket's lock: at most one daemon serves a socket path (flock on ``<socket>.lock``)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


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
