"""The benchmarks' /proc view of a process tree: descendants found by parent pid, CPU summed."""

import subprocess
import sys

from hw.bench import proctree

# A child that burns 0.4 s of its own CPU time, then starts a grandchild that burns 0.3 s (on the
# same stdout, where it says so), then waits: CPU time by construction (time.process_time).
BURN = """
import subprocess, sys, time
def burn(s):
    while time.process_time() < s:
        pass
burn(0.4)
g = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(g.pid, flush=True)
sys.stdin.read()
g.kill()
"""
GRANDCHILD = (
    "import time\nwhile time.process_time() < 0.3:\n    pass\nprint('done', flush=True)\n"
    "time.sleep(60)"
)


def test_the_tree_holds_the_grandchild_and_sums_every_process_cpu():
    child = subprocess.Popen(
        [sys.executable, "-c", BURN, GRANDCHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        grandchild = int(child.stdout.readline())
        pids = proctree.tree(child.pid)
        assert set(pids) == {child.pid, grandchild}
        assert child.stdout.readline().strip() == "done"  # the grandchild's burn is over
        # /proc counts whole clock ticks by sampling: allow a few of them below the exact sum.
        assert proctree.tree_cpu_s(child.pid) >= 0.4 + 0.3 - 0.05
        assert proctree.tree_cpu_s(grandchild) < proctree.tree_cpu_s(child.pid)
    finally:
        child.stdin.close()
        child.wait(10)
    assert proctree.tree(child.pid) == {}  # reaped: nothing left to count or kill


def test_leftovers_are_killed_only_when_pid_and_start_time_match():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        seen = proctree.tree(p.pid)
        cpu, start = seen[p.pid]
        proctree.kill_leftovers({p.pid: (cpu, start + 1)})  # another process with this pid
        assert p.poll() is None
        proctree.kill_leftovers(seen)
        assert p.wait(10) == -9
    finally:
        p.kill()
        p.wait(10)
