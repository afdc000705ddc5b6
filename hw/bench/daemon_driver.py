"""A real daemon process for the benchmarks, and a treatment brought up on it.

``spawned_daemon`` starts ``python -m hw --sim`` with its socket and state in a directory;
``run_treatment`` starts a program and waits until it runs, recording any trip met on the way in
``SETUP_TRIPS`` (a finding the bench prints and puts in its JSON line, never hides).
"""

from __future__ import annotations

import contextlib
import sys
import time

from hw.bench.proctree import end_process


def _wait_socket(path, timeout_s: float = 20.0) -> None:
    import socket as _socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            s.connect(str(path))
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the daemon did not open {path}")


# Trips met while bringing a treatment up for a measurement (a loop stall on a busy host): each is
# a finding, printed and put in the JSON line ("setup_trips"), never hidden.
SETUP_TRIPS: list[str] = []


def _start_once(client, program: str, level: int) -> dict:
    from hw.service.client import DaemonError

    client.request("start", program=program, level=level)
    deadline = time.monotonic() + 10.0
    status = {}
    while time.monotonic() < deadline:
        # A trip between the start and here refuses the renewal ("no treatment is running"):
        # the status read next says which, and the caller records it. Any other error is raised.
        try:
            client.request("lease")
        except DaemonError as e:
            if e.code != "REFUSED":
                raise
        status = client.request("status")
        if status["state"] in ("running", "fault"):
            return status
        time.sleep(0.1)
    return status


def _wait_ready(client, timeout_s: float = 15.0) -> None:
    """Wait (bounded) until a treatment can start, running the self-test when it is due."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = client.request("status")["state"]
        if st in ("ready", "finished"):
            return
        if st == "idle":
            client.request("self_test")
        time.sleep(0.1)


def _run_treatment(client, program: str = "demo", level: int = 4) -> None:
    """Start ``program`` and wait until it runs. A trip on the way is recorded in SETUP_TRIPS,
    acknowledged, the self-test run again, and the start made once more (the figure then comes
    from the second treatment, and the JSON line says so)."""
    status = _start_once(client, program, level)
    if status["state"] == "fault" and status.get("fault"):
        f = status["fault"]
        SETUP_TRIPS.append(f"{f['code']}: {f['detail']}")
        client.request("acknowledge")
        _wait_ready(client)
        status = _start_once(client, program, level)
    if status["state"] != "running":
        raise RuntimeError(f"the treatment did not reach running: {status}")


def _rss_kb(pid: int) -> int:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def spawned_daemon(state_dir, client_name: str = "bench", sim_time: bool = False):
    """A real daemon process (``python -m hw --sim``) with its socket and state in ``state_dir``;
    with ``sim_time`` its loop runs on ``--sim-time`` (hw.clock.TickClock: a pause of this host
    is not a stall; the test suite runs the bench so).

    Yields ``(process, socket path, client)``: a hw.service.client Client named ``client_name``,
    once the daemon reports ``ready``. On exit (also on an exception or Ctrl-C) the daemon is
    terminated and waited for (killed after 10 s).
    """
    import os
    import subprocess
    from pathlib import Path

    from hw.service.client import Client

    sock = Path(state_dir) / "hw.sock"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    argv = [sys.executable, "-m", "hw", "--sim", "--socket", str(sock)]
    argv += ["--state-dir", str(state_dir)]
    proc = subprocess.Popen(
        argv + (["--sim-time"] if sim_time else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        _wait_socket(sock)
        c = Client(str(sock), client_name, status=False)
        for _ in range(100):
            if c.request("status")["state"] == "ready":
                break
            time.sleep(0.05)
        try:
            yield proc, sock, c
        finally:
            c.close()
    finally:
        end_process(proc, 10.0)
