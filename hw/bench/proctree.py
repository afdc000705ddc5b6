"""CPU use of a process and all its descendants, from /proc (Linux; no dependency).

Used by the benchmarks to measure the daemon whatever its process layout: its own process (every
thread counted) and every child it started, found by their parent pid; and to end the processes
they started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, CPU clock ticks of the process and its reaped children, start time) or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
    # Fields 4 (ppid), 14-17 (utime, stime, cutime, cstime; every thread included), 22 (start).
    return int(rest[1]), sum(int(x) for x in rest[11:15]), int(rest[19])


def tree(root: int) -> dict[int, tuple[int, int]]:
    """``{pid: (cpu ticks, start time)}`` of ``root`` and every live descendant (by ppid)."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            stats[int(name)] = st
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in out:
            out[pid] = stats[pid][1:]
            todo.extend(kids.get(pid, ()))
    return out


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its descendants (a child that exited and was
    reaped stays counted, in its parent's cutime)."""
    return sum(cpu for cpu, _ in tree(root).values()) / os.sysconf("SC_CLK_TCK")


def tree_cpu_pct(root: int, seconds: float, every_s: float | None = None, do=None) -> float:
    """% of one core used by ``root`` and its descendants over ``seconds`` of wall time, calling
    ``do()`` every ``every_s`` meanwhile (if given)."""
    c0, t0 = tree_cpu_s(root), time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        if do is not None:
            do()
        time.sleep(min(end - now, every_s or seconds))
    return 100.0 * (tree_cpu_s(root) - c0) / (time.monotonic() - t0)


def end_process(proc, grace_s: float) -> None:
    """Terminate a child ``subprocess.Popen``, wait ``grace_s`` for it, then SIGKILL it (and wait
    5 s more): a benchmark never leaves a process of its own behind."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def kill_leftovers(seen: dict[int, tuple[int, int]]) -> None:
    """SIGKILL any process of the daemon's tree still alive after the daemon ended (the same
    pid with the same start time: not a reused pid)."""
    for pid, (_cpu, start) in seen.items():
        st = _stat(pid)
        if st is not None and st[2] == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def host_steal_s() -> float | None:
    """CPU time the hypervisor took from this machine since boot, all CPUs (``steal`` in
    /proc/stat), or None where it is not reported. The bench prints how much of it fell in its
    run: real-time figures measured while the host stole time say so."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def steal_ms_between(s0: float | None, s1: float | None) -> float | None:
    """The steal between two :func:`host_steal_s` readings (ms), or None if either is missing."""
    return None if s0 is None or s1 is None else (s1 - s0) * 1000.0
