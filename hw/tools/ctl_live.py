"""The terminal side of ``python -m hw.ctl``: a live status line with event lines above it, and
single key presses (``ctl start``'s + / - / q)."""

from __future__ import annotations

import os
import select
import shutil
import sys
import time

from hw.tools.ctl_format import status_line

TTY_REFRESH_S = 0.1  # a live line on a terminal
PLAIN_REFRESH_S = 0.5  # a live line per half second into a pipe or a file


class LiveView:
    """A live status line (rewritten in place on a terminal, one line per 0.5 s otherwise) with
    event lines printed above it."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.period = TTY_REFRESH_S if self.tty else PLAIN_REFRESH_S
        self.next_draw = 0.0
        self.drawn = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _stamp(self) -> str:
        return time.strftime("%H:%M:%S ")

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self._write("\r\033[K")
            self.drawn = False

    def message(self, text: str) -> None:
        self._clear()
        self._write(self._stamp() + text + "\n")
        if self.tty:
            self.next_draw = 0.0  # the line was cleared: draw it again at once

    def status(self, s: dict | None) -> None:
        now = time.monotonic()
        if s is None or now < self.next_draw:
            return
        self.next_draw = now + self.period
        line = status_line(s)
        if self.tty:
            width = shutil.get_terminal_size().columns
            self._write("\r\033[K" + line[: max(20, width - 1)])
            self.drawn = True
        else:
            self._write(self._stamp() + line + "\n")

    def close(self) -> None:
        if self.tty and self.drawn:
            self._write("\n")
            self.drawn = False


class Keys:
    """Single key presses from a terminal (cbreak mode: Ctrl-C still interrupts)."""

    def __init__(self):
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self._termios = termios
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def read(self) -> str:
        ready, _, _ = select.select([self.fd], [], [], 0)
        return os.read(self.fd, 32).decode(errors="ignore") if ready else ""

    def close(self) -> None:
        self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, self.saved)
