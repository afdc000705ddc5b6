"""The simulated board's electrical state, mirrored into a small file other processes can read.

On real hardware the lines outlive the process: after ``kill -9`` the enable line keeps its level
and the dead-man stops toggling, and the monostable then opens the relay. The simulated board lives
inside the daemon, so it writes its pin levels and the time of the last dead-man edge into an
mmap'd file; a test reads it after killing the daemon and applies the monostable's rule to decide
when the relay opened. Its times (``last_kick_s``, ``written_s``) are CLOCK_MONOTONIC, which every
process shares, whatever clock the board itself runs on: the lines outlive the process in real
time.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_FMT = "<IIBBBBdddd"  # magic, pid, enable, shdn, relay, latch, last_kick_s, t_s, i_ua, hold_s
_SIZE = struct.calcsize(_FMT)
_MAGIC = 0x4D434B31  # "MCK1"


class Mirror:
    def __init__(self, path: str | os.PathLike, deadman_s: float):
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, _SIZE)
            self._mm = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self.deadman_s = deadman_s
        self.pid = os.getpid()

    def write(
        self,
        enable: bool,
        shdn: bool,
        relay: bool,
        latch: bool,
        last_kick_s: float,
        t_s: float,
        i_ua: float,
    ) -> None:
        struct.pack_into(
            _FMT,
            self._mm,
            0,
            _MAGIC,
            self.pid,
            enable,
            shdn,
            relay,
            latch,
            last_kick_s,
            t_s,
            i_ua,
            self.deadman_s,
        )

    def close(self) -> None:
        self._mm.close()


def read_mirror(path: str | os.PathLike) -> dict:
    """The last state the board wrote, plus when the dead-man opened (or will open) the relay."""
    data = Path(path).read_bytes()[:_SIZE]
    magic, pid, enable, shdn, relay, latch, kick, t, i_ua, hold = struct.unpack(_FMT, data)
    if magic != _MAGIC:
        raise ValueError(f"{path} is not a board mirror")
    return {
        "pid": pid,
        "enable": bool(enable),
        "dac_shdn_high": bool(shdn),
        "relay_closed_at_write": bool(relay),
        "latched": bool(latch),
        "last_kick_s": kick,
        "written_s": t,
        "current_ua": i_ua,
        "deadman_s": hold,
        # The monostable holds the relay for deadman_s after the last edge, no longer.
        "relay_open_by_s": kick + hold,
    }
