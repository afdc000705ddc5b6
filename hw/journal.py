"""Log lines for journald: a syslog priority on every line, so `journalctl -p err` shows errors.

Under systemd, stdout/stderr of a service is a stream socket into journald, which reads a leading
``<N>`` (syslog priority 0-7) on each line as that line's priority (``SyslogLevelPrefix=yes``, the
default) and strips it. Without the prefix every line is stored at the unit's default, info (6),
and ``journalctl -p err`` shows nothing, not even a fault. systemd tells a process which stream is
the journal with ``JOURNAL_STREAM=<device>:<inode>``; the prefix is written only when the log
stream is that very file (a child with its output redirected, a terminal, a test's pipe get plain
lines). Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Python level -> syslog priority (sd-daemon.h SD_ERR etc.).
_PRIORITY = (
    (logging.CRITICAL, 2),  # SD_CRIT
    (logging.ERROR, 3),  # SD_ERR
    (logging.WARNING, 4),  # SD_WARNING
    (logging.INFO, 6),  # SD_INFO
)
_DEBUG = 7  # SD_DEBUG


def syslog_priority(levelno: int) -> int:
    """The syslog priority (2 crit .. 7 debug) of a Python log level."""
    for level, priority in _PRIORITY:
        if levelno >= level:
            return priority
    return _DEBUG


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record with ``<N>``: journald splits a record's text at newlines
    (a traceback) and would store the continuation lines at info without it."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def stream_is_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream named by ``JOURNAL_STREAM`` (device:inode)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset/garbled, or no file behind the stream
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(stream: TextIO | None = None, level: int = logging.INFO) -> logging.Handler:
    """Log to ``stream`` (default stdout), one event per line, ``<N>``-prefixed for journald.

    Like ``logging.basicConfig``: does nothing to a root logger that already has handlers.
    Returns the handler that was made (installed or not).
    """
    stream = sys.stdout if stream is None else stream
    handler = logging.StreamHandler(stream)
    formatter = JournalFormatter if stream_is_journal(stream) else logging.Formatter
    handler.setFormatter(formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    return handler


def log_realtime(log: logging.Logger, thread: str, priority: int, note: str) -> bool:
    """Log whether ``thread`` got the real-time scheduling it asked for; True if it did.

    ``note`` is what ``hw.control.runner._tune_thread(priority)`` returned. Refused real-time is a
    warning (it shows under ``journalctl -p warning``): the loop then runs at normal priority, where
    a busy host can stall it into a LOOP_STALL trip. The usual cause is a missing ``LimitRTPRIO=``.
    """
    if priority <= 0:
        log.info("REALTIME %s: not requested (loop.realtime_priority=0): %s", thread, note)
        return False
    if "SCHED_FIFO" in note:
        log.info("REALTIME %s: granted: %s", thread, note)
        return True
    log.warning(
        "REALTIME %s: SCHED_FIFO %d refused, running at normal priority (%s); "
        "a busy host may stall the loop (LimitRTPRIO= of the unit?)",
        thread,
        priority,
        note,
    )
    return False
