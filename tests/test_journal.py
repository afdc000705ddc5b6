"""The daemon's log lines carry journald priorities (`journalctl -p err` shows errors), start-up
says whether real-time scheduling was granted, and a bad config exits 2 (the unit's
RestartPreventExitStatus=2). Unit tests of hw/journal.py, then the real daemon process with its
stdout made the journal stream (JOURNAL_STREAM set to that file's device:inode, as systemd does).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import Daemon, subprocess_env

from hw.journal import (
    JournalFormatter,
    log_realtime,
    setup_logging,
    stream_is_journal,
    syslog_priority,
)


def test_syslog_priorities():
    assert syslog_priority(logging.CRITICAL) == 2
    assert syslog_priority(logging.ERROR) == 3
    assert syslog_priority(logging.WARNING) == 4
    assert syslog_priority(logging.INFO) == 6
    assert syslog_priority(logging.DEBUG) == 7


def test_every_line_of_a_record_carries_its_priority():
    record = logging.LogRecord("hw", logging.ERROR, __file__, 1, "one\ntwo", None, None)
    text = JournalFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert text.splitlines() == ["<3>ERROR hw: one", "<3>two"]


def test_prefix_only_when_the_stream_is_the_journal_stream(tmp_path):
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(a, env)
        assert not stream_is_journal(b, env)  # e.g. a child's stdout redirected to a file
        assert not stream_is_journal(a, {})
        assert not stream_is_journal(a, {"JOURNAL_STREAM": "garbage"})


def test_setup_logging_picks_the_formatter(tmp_path, monkeypatch):
    with open(tmp_path / "log", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert isinstance(setup_logging(f).formatter, JournalFormatter)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not isinstance(setup_logging(f).formatter, JournalFormatter)


def test_refused_realtime_is_a_warning(caplog):
    log = logging.getLogger("hw.test")
    with caplog.at_level(logging.INFO, logger="hw.test"):
        assert log_realtime(log, "loop thread", 20, "timerslack=1ns, SCHED_FIFO 20") is True
        assert log_realtime(log, "loop thread", 20, "best effort (no real-time priority)") is False
        assert log_realtime(log, "loop thread", 0, "timerslack=1ns") is False
    levels = [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records]
    assert levels == [
        (logging.INFO, "REALTIME loop thread"),
        (logging.WARNING, "REALTIME loop thread"),
        (logging.INFO, "REALTIME loop thread"),
    ]
    assert "LimitRTPRIO" in caplog.records[1].getMessage()


def _journal_env(log_path: Path) -> dict[str, str]:
    st = os.stat(log_path)
    env = subprocess_env()
    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    return env


def test_bad_config_exits_2_with_err_priority_lines(tmp_path):
    """A bad site file: exit 2 (RestartPreventExitStatus=2), errors at <3>, nothing created."""
    site = tmp_path / "site.yaml"
    site.write_text("limits:\n  no_such_key: 1\n")
    log_path = tmp_path / "out.log"
    log_path.touch()
    with open(log_path, "ab") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "hw", "--sim", "--config", str(site)]
            + ["--socket", str(tmp_path / "hw.sock"), "--state-dir", str(tmp_path / "state")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_journal_env(log_path),
            cwd=tmp_path,
            timeout=60,
        )
    text = log_path.read_text()
    assert proc.returncode == 2, text
    errors = [line for line in text.splitlines() if line.startswith("<3>")]
    assert any(str(site) in line and "no_such_key" in line for line in errors), text
    assert errors[-1].startswith("<3>ERROR hw: CONFIG invalid")
    # Every line carries a priority (none falls back to journald's default, info).
    assert all(re.match(r"<[0-7]>", line) for line in text.splitlines()), text
    assert not (tmp_path / "state").exists() and not (tmp_path / "hw.sock").exists()


@pytest.mark.slow
def test_daemon_logs_realtime_with_priorities(tmp_path):
    """A real (simulated) daemon under a journal stream: startup says whether real-time was
    granted, at info if granted and at warning if refused; a fault is an error; no line lacks a
    priority."""
    d = Daemon(tmp_path, "hw")
    d.log_path.touch()
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            d.argv(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_journal_env(d.log_path),
            cwd=tmp_path,
        )
    try:
        d.wait_up()
        with d.client() as c:
            c.request("estop")  # a fault: journalctl -p err must show it
    finally:
        assert d.terminate() == 0
    lines = d.log().splitlines()
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines
    faults = [line for line in lines if "EVENT fault" in line]
    assert faults and all(line.startswith("<3>ERROR") for line in faults), lines
    # The loop's thread (in the real-time process) asks for SCHED_FIFO; the service runs in the
    # normal class (at nice -10 where the unit allows it).
    assert any("service: nice" in line for line in lines), lines
    for thread in ("loop thread",):
        rt = [line for line in lines if f"REALTIME {thread}:" in line]
        assert len(rt) == 1, lines
        granted = "granted" in rt[0]
        assert rt[0].startswith("<6>INFO" if granted else "<4>WARNING"), rt[0]
