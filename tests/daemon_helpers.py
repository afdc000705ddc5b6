"""Helpers for the tests that run the real daemon process (test_daemon, test_crash, test_fuzz).

Import it explicitly (``from daemon_helpers import ...``); it is not a conftest. A test either
makes a fixture from :class:`DaemonFactory`::

    @pytest.fixture
    def daemons(tmp_path):
        with DaemonFactory(tmp_path) as f:
            yield f

or, when it runs a treatment, hands a scenario to :func:`run_scenario` (run once, never retried).

Every daemon runs as ``sys.executable -m hw --sim --sim-time`` with PYTHONPATH set to the repository
root, its socket, state directory and board-mirror file in the test's tmp_path, and its stdout (one
event a line) captured to a file. Teardown sends SIGTERM, then SIGKILL after 5 s.

``--sim-time`` (hw.clock.TickClock): the real-time process runs in real time, but its loop, board,
lease, heartbeat, self-test and supervisor read a clock that the loop's runner moves once a tick,
never by more than the scheduled step. A pause of the host (a vCPU stolen by the hypervisor, a
loaded CI machine) is then a pause of the simulated world, not a LOOP_STALL or an expired lease
that the test did not ask for, and no scenario needs to be run twice. ``Daemon(realtime=True)``
runs on real time, for the few tests about real time itself.

Run as a script, this file is the controlling kiosk of the crash test (``controller`` mode): it
connects, starts a program, renews the lease every 100 ms, prints READY once the treatment runs
and then keeps renewing until it is killed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # (script mode) so that ``hw`` imports from this checkout
    sys.path.insert(0, str(REPO))

from hw.hal.sim.mirror import read_mirror  # noqa: E402
from hw.service.client import Client, DaemonError  # noqa: E402

READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0
LEASE_RENEW_S = 0.1  # like the kiosk
# Status ``output`` values with the output cut: "off", or "tripped" while a fault is latched (the
# loop's OutputState.TRIPPED: enable low, DAC shut down). A daemon that comes up with a latched
# fault reports "tripped" until it is acknowledged.
OUTPUT_OFF = ("off", "tripped")


def subprocess_env() -> dict:
    """Environment for a child python: this checkout first on the path, unbuffered output."""
    env = dict(os.environ)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NOTIFY_SOCKET", None)  # never talk to a real systemd
    env.pop("MCK_CONFIG", None)
    return env


def mirror(path) -> dict:
    """The board mirror, read until two reads agree (the daemon may be writing it)."""
    prev = None
    for _ in range(50):
        m = read_mirror(path)
        if m == prev:
            return m
        prev = m
    return prev


class Daemon:
    """One daemon process. ``socket``, ``state_dir``, ``mirror_path`` and ``log_path`` are files in
    the test's tmp_path; several Daemon objects may share a state dir (restart after a crash)."""

    def __init__(
        self,
        root: Path,
        name: str,
        state_dir: Path | None = None,
        config: Path | None = None,
        realtime: bool = False,
    ):
        self.root = root
        self.name = name
        self.realtime = realtime  # CLOCK_MONOTONIC, not --sim-time (see the module's docstring)
        self.socket = root / f"{name}.sock"
        self.state_dir = state_dir or (root / "state")
        self.mirror_path = root / f"{name}.mirror"
        self.log_path = root / f"{name}.log"
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.rt_pid: int | None = None  # its real-time process (hw/control/rt.py), once it is up
        self._clients: list[Client] = []

    @property
    def db_path(self) -> Path:
        return self.state_dir / "history.db"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "hw", "--sim", "--socket", str(self.socket)]
        if not self.realtime:
            argv.append("--sim-time")
        argv += ["--state-dir", str(self.state_dir), "--sim-mirror", str(self.mirror_path)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv

    def spawn(self) -> subprocess.Popen:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=subprocess_env(),
                cwd=self.root,
            )
        return self.proc

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        """Spawn and wait until the socket accepts and the daemon has finished starting up
        (``ready``, or ``fault`` when it comes up with a latched fault). Returns that status."""
        self.spawn()
        return self.wait_up(timeout_s)

    def wait_up(self, timeout_s: float = READY_TIMEOUT_S, states=("ready", "fault")) -> dict:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} during start-up:\n{self.log()}"
                )
            try:
                with Client(str(self.socket), "probe", timeout_s=2.0) as c:
                    last = c.request("status")
                    if last["state"] in states:
                        self.rt_pid = rt_pid_of(self.proc.pid)
                        return last
            except (OSError, TimeoutError, ConnectionError) as e:
                last = e
            time.sleep(0.02)
        raise AssertionError(f"daemon not up within {timeout_s} s (last: {last!r}):\n{self.log()}")

    def client(self, name: str = "test", *, status: bool = False, timeout_s: float = 5.0):
        c = Client(str(self.socket), name, status=status, timeout_s=timeout_s)
        self._clients.append(c)
        return c

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mirror(self) -> dict:
        return mirror(self.mirror_path)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM; returns the exit code, or None when it had to be killed after ``timeout_s``."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def kill9(self) -> tuple[float, float]:
        """SIGKILL of the service process (the real-time process then cuts and exits); returns
        CLOCK_MONOTONIC just before and just after the signal was sent."""
        rt = self.rt_pid = rt_pid_of(self.proc.pid)
        t0 = time.monotonic()
        os.kill(self.proc.pid, signal.SIGKILL)
        t1 = time.monotonic()
        self.proc.wait(5)
        # The real-time process reads EOF, cuts and exits; it holds the socket lock until then
        # (a new daemon cannot start before), as systemd would kill it with the unit's cgroup.
        assert pid_gone(rt, 5.0), f"the real-time process {rt} outlived its service"
        for c in self._clients:
            c.close()
        self._clients.clear()
        return t0, t1


def rt_pid_of(service_pid: int) -> int:
    """The real-time process of the daemon ``service_pid`` (its child running hw.control.rt)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == service_pid and b"hw.control.rt" in (d / "cmdline").read_bytes():
                return int(d.name)
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    raise AssertionError(f"daemon {service_pid} has no real-time process")


def pid_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Wait until ``pid`` has exited (gone, or a zombie); whether it did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


class DaemonFactory:
    """Makes daemons in one tmp_path and stops every one of them at exit."""

    def __init__(self, root: Path, config: Path | None = None):
        self.root = Path(root)
        self.config = config  # the default --config of the daemons it makes
        self.daemons: list[Daemon] = []

    def make(self, name: str = "hw", **kw) -> Daemon:
        kw.setdefault("config", self.config)
        d = Daemon(self.root, name, **kw)
        self.daemons.append(d)
        return d

    def start(self, name: str = "hw", **kw) -> Daemon:
        d = self.make(name, **kw)
        d.start()
        return d

    def __enter__(self) -> DaemonFactory:
        return self

    def __exit__(self, *exc) -> None:
        for d in self.daemons:
            d.terminate()


TEST_PROGRAMS = [
    {
        "id": "short",
        "name": "Short",
        "description": "One 5-second step, the shortest a step may be.",
        "steps": [
            {
                "zone": "cheeks",
                "motion": "glide",
                "duration_s": 5,
                "frequency_hz": 10,
                "pulse_width_ms": 40,
                "max_level": 4,
                "relocate_cue_s": 5,
                "text": "Glide from beside the nose out towards the ear.",
            }
        ],
    },
    {
        # Two 50 ms phases per 100 ms: a current flows at every instant once it runs.
        "id": "full-duty",
        "name": "Full duty",
        "description": "Back-to-back phases, no gap.",
        "steps": [
            {
                "zone": "cheeks",
                "motion": "glide",
                "duration_s": 30,
                "frequency_hz": 10,
                "pulse_width_ms": 50,
                "max_level": 4,
                "relocate_cue_s": 5,
                "text": "Glide from beside the nose out towards the ear.",
            }
        ],
    },
]


def write_test_config(path: Path) -> Path:
    """A site file that keeps every packaged program and adds ``short`` (one 5 s step, the
    shortest allowed) and ``full-duty``. A site file's ``programs`` replaces the packaged list, so
    the packaged programs are copied into it. Every limit keeps its packaged value."""
    import yaml

    from hw.config import default_config_path

    programs = yaml.safe_load(Path(default_config_path()).read_text())["programs"]
    path.write_text(yaml.safe_dump({"programs": [*programs, *TEST_PROGRAMS]}, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ host timing
# The 2 kHz loop runs in a process of its own (hw/control/rt.py) that shares its GIL with nothing
# else, and on --sim-time a pause of the host is no gap in its time. No scenario is retried: a
# LOOP_STALL where a scenario expects none fails the test as a HostTimingFault (naming the trip),
# like any other unexpected fault.
HOST_TIMING_FAULTS = frozenset({"LOOP_STALL"})


class HostTimingFault(AssertionError):
    """The daemon tripped on a host-timing fault where the scenario expected none."""


def timing_fault(status: dict) -> str | None:
    f = status.get("fault")
    if f and f.get("code") in HOST_TIMING_FAULTS:
        return f"{f['code']}: {f.get('detail', '')}"
    return None


def check_timing(status: dict) -> dict:
    why = timing_fault(status)
    if why:
        raise HostTimingFault(why)
    return status


def run_scenario(root: Path, scenario, config: Path | None = None):
    """Run ``scenario(factory)`` once, with fresh daemons under ``root`` (stopped at the end).
    ``config`` is the factory's default --config. Nothing is retried."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with DaemonFactory(Path(root), config=config) as factory:
        return scenario(factory)


def expect_ready(d: Daemon) -> dict:
    """The status of a freshly started daemon that must have come up ready."""
    with Client(str(d.socket), "probe") as c:
        st = check_timing(c.request("status"))
    assert st["state"] == "ready" and st["output"] == "off", st
    return st


# ------------------------------------------------------------------------------ client helpers
def renew_until(client: Client, predicate, timeout_s: float, renew: bool = True) -> dict:
    """Renew the lease every 100 ms (like the kiosk) and poll status until ``predicate(status)``.
    Works with or without a status subscription. Raises HostTimingFault when a host-timing trip
    is seen before the predicate holds, AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    st: dict = {}
    while time.monotonic() < deadline:
        if renew:
            client.request("lease")
        st = client.request("status")
        if predicate(st):
            return st
        check_timing(st)
        time.sleep(LEASE_RENEW_S)
    raise AssertionError(f"timed out after {timeout_s} s; last status {st}")


def keep_lease(client: Client, seconds: float) -> dict:
    """Renew the lease every 100 ms for ``seconds``; returns the last status."""
    end = time.monotonic() + seconds
    while True:
        client.request("lease")
        st = check_timing(client.request("status"))
        if time.monotonic() >= end:
            return st
        time.sleep(min(LEASE_RENEW_S, max(0.0, end - time.monotonic())))


def start_treatment(client: Client, program: str = "demo", level: int = 4) -> dict:
    """Start ``program`` and keep the lease until the output runs; returns that status."""
    try:
        client.request("start", program=program, level=level)
    except DaemonError:
        check_timing(client.request("status"))
        raise
    return renew_until(client, lambda s: s["state"] == "running", 15.0)


def recover(client: Client, timeout_s: float = 10.0) -> dict:
    """Acknowledge a latched fault (if any), run the self-test and wait for ``ready``."""
    st = client.request("status")
    if st["state"] == "fault":
        client.request("acknowledge")
        st = client.request("status")
    if st["state"] != "ready":
        client.request("self_test")
    return renew_until(client, lambda s: s["state"] == "ready", timeout_s, renew=False)


def open_db_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


def quick_check(path: Path) -> str:
    conn = open_db_readonly(path)
    try:
        return conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()


def treatments(path: Path) -> dict[int, tuple]:
    """Every stored treatment by id: (end_reason, active_s, charge_uc, net_dc, mean, peak,
    zones)."""
    conn = open_db_readonly(path)
    try:
        zones: dict[int, list] = {}
        for row in conn.execute(
            "SELECT treatment_id, zone, active_s, charge_uc FROM treatment_zones ORDER BY 1, 2"
        ):
            zones.setdefault(row[0], []).append(tuple(row[1:]))
        return {
            r[0]: (*r[1:], tuple(zones.get(r[0], ())))
            for r in conn.execute(
                "SELECT id, end_reason, active_s, charge_uc, net_dc_charge_uc, mean_current_ua,"
                " peak_current_ua FROM treatments ORDER BY id"
            )
        }
    finally:
        conn.close()


# ------------------------------------------------------------------------------ controller mode
def controller_main(argv: list[str]) -> int:
    """``python tests/daemon_helpers.py controller SOCKET [PROGRAM [LEVEL]]``"""
    sock = argv[0]
    program = argv[1] if len(argv) > 1 else "demo"
    level = int(argv[2]) if len(argv) > 2 else 4
    c = Client(sock, "kiosk-under-test")
    try:
        start_treatment(c, program, level)
    except HostTimingFault as e:
        print(f"HOST_TIMING {e}", flush=True)
        return 3
    print("READY", flush=True)
    while True:  # keep the lease until killed (or until the treatment ends)
        c.request("lease")
        time.sleep(LEASE_RENEW_S)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "controller":
        try:
            sys.exit(controller_main(sys.argv[2:]))
        except DaemonError as e:
            print(f"ERROR {e}", flush=True)
            sys.exit(1)
    print(__doc__)
    sys.exit(2)
