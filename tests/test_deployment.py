"""Deployment details found by booting the units under systemd 252 (issue 7).

Each group checks the thing itself, not a copy of it:
- the rendered units (``scripts/install.sh --render-only``, the code path of a real install);
- the sysusers.d file, applied by the real ``systemd-sysusers`` to a scratch root;
- the pinned, hashed Pi requirements and how install.sh uses them;
- the simulated daemon under the hw unit's own syscall filter and MemoryDenyWriteExecute, applied
  by a libseccomp sandbox with systemd 252's rules (tests/helpers/seccomp_sandbox.c).
The journald priorities and the exit status on a bad config are in tests/test_journal.py.

No systemd runs as PID 1 here, so nothing is booted: the cgroup device rules, the kiosk's
cgroup and the real board under the filter are checked on the Pi (docs/deployment.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import (
    OUTPUT_OFF,
    Daemon,
    keep_lease,
    renew_until,
    run_scenario,
    start_treatment,
)
from test_units import HW, KIOSK, Unit, _fake_prefix, _render

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "install.sh"
SYSUSERS = "microcurrent-kiosk.sysusers.conf"
PI_TXT = ROOT / "requirements" / "pi.txt"
PI_BUILD_TXT = ROOT / "requirements" / "pi-build.txt"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("deploy")
    outdir = base / "out"
    proc = _render(outdir, MCK_PREFIX=str(_fake_prefix(base)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return outdir


@pytest.fixture(scope="module")
def hw(out: Path) -> Unit:
    return Unit(out / HW)


@pytest.fixture(scope="module")
def kiosk(out: Path) -> Unit:
    return Unit(out / KIOSK)


# --- the hardware daemon's unit --------------------------------------------------------------


def test_hw_does_not_restart_after_a_bad_config(hw):
    # The daemon exits 2 on a bad config (test_bad_config_exits_2 below); a restart cannot fix it.
    assert hw.get("Service", "Restart") == "on-failure"
    assert hw.words("Service", "RestartPreventExitStatus") == ["2"]


def test_hw_waits_for_the_spidev_module(hw):
    assert "modprobe@spidev.service" in hw.words("Unit", "Wants")
    assert "modprobe@spidev.service" in hw.words("Unit", "After")
    # Requires= would fail the daemon with modprobe@ (it never fails, but the point is ordering).
    assert "modprobe@spidev.service" not in hw.words("Unit", "Requires")


def test_hw_devices_by_major_not_by_path(hw):
    allow = hw.all("Service", "DeviceAllow")
    assert "char-spi rw" in allow  # every /dev/spidev*, also nodes made after the unit started
    assert "char-gpiochip rw" in allow  # lgpio (gpiozero's LGPIOFactory) opens /dev/gpiochipN
    # A path rule for a node missing at start is dropped by systemd for the whole run.
    assert not [a for a in allow if a.startswith("/dev/spidev")]
    assert hw.get("Service", "DevicePolicy") == "closed"


def test_hw_start_limit_retries_a_slow_boot_then_gives_up(hw):
    interval_s = int(hw.get("Unit", "StartLimitIntervalSec"))
    burst = int(hw.get("Unit", "StartLimitBurst"))
    restart_s = int(hw.get("Service", "RestartSec"))
    # At least ~25 s of retries before the limit can hit (a slow boot's udev), and the limit
    # window longer than that, so a daemon failing at once does end in "failed" (no endless loop).
    assert (burst - 1) * restart_s >= 25
    assert interval_s > (burst - 1) * restart_s
    assert burst <= 20


def test_hw_files_are_owner_only_and_the_socket_stays_reachable(hw, kiosk):
    assert hw.get("Service", "UMask") == "0077"
    # history.db lives in the state directory: owner only, whatever the group.
    assert hw.get("Service", "StateDirectoryMode") == "0700"
    # The socket's directory: systemd sets this mode itself (UMask= does not apply to it); group
    # x lets the kiosk (in Group=) reach the socket, which the daemon chmods to 0660.
    assert hw.get("Service", "RuntimeDirectoryMode") == "0750"
    assert hw.get("Service", "Group") in kiosk.words("Service", "SupplementaryGroups")
    service_src = "".join(p.read_text() for p in (ROOT / "hw" / "service").glob("*.py"))
    assert "os.chmod(path, 0o660)" in service_src  # the socket's mode does not come from umask


def test_hw_syscall_filter_and_wx_memory(hw):
    filters = hw.all("Service", "SystemCallFilter")
    assert "@system-service" in filters
    assert "~@privileged" in filters
    # @resources holds sched_setscheduler (SCHED_FIFO) and prlimit64: it must not be denied.
    assert not [f for f in filters if f.startswith("~") and "@resources" in f]
    assert hw.get("Service", "SystemCallErrorNumber") == "EPERM"  # EPERM, never SIGSYS
    assert hw.get("Service", "MemoryDenyWriteExecute") == "yes"


def test_hw_two_processes_stop_together_and_only_the_child_is_realtime(hw):
    # mixed: SIGTERM to the service only, which stops its real-time child in order; SIGKILL to both.
    assert hw.all("Service", "KillMode") == ["mixed"]
    assert hw.get("Service", "NotifyAccess") == "main"  # the child cannot keep the unit alive
    assert int(hw.get("Service", "LimitRTPRIO")) >= 1
    for key in ("CPUSchedulingPolicy", "CPUSchedulingPriority", "CPUSchedulingResetOnFork"):
        assert not hw.all("Service", key), key  # would make the whole service real-time
    assert hw.all("Service", "RestrictRealtime") in ([], ["no"])


# --- the kiosk's unit ------------------------------------------------------------------------


def test_kiosk_has_no_pam_session_and_says_why(kiosk):
    # PAMName= moves the UI into a logind session scope, out of this unit's MemoryMax=/DeviceAllow=.
    assert not kiosk.all("Service", "PAMName")
    assert kiosk.get("Service", "MemoryMax")
    assert kiosk.all("Service", "DeviceAllow")
    assert re.search(r"No PAMName=.*\n(#.*\n)*#.*scope", kiosk.text), "the comment says why"


def test_kiosk_allows_wx_memory_for_mesa_and_says_why(kiosk):
    assert kiosk.all("Service", "MemoryDenyWriteExecute") in ([], ["no"])
    assert re.search(r"No MemoryDenyWriteExecute=.*\n(#.*\n)*#.*JIT", kiosk.text)
    assert kiosk.get("Service", "UMask") == "0077"


# --- system users from sysusers.d ------------------------------------------------------------


def test_sysusers_declares_every_user_and_group_the_units_use(out, hw, kiosk):
    lines = [
        line.split()
        for line in (out / SYSUSERS).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    users = {f[1] for f in lines if f[0] == "u"}
    groups = {f[1] for f in lines if f[0] == "g"}
    members = {(f[1], f[2]) for f in lines if f[0] == "m"}
    hw_user, kiosk_user = hw.get("Service", "User"), kiosk.get("Service", "User")
    assert {hw_user, kiosk_user} <= users
    assert hw.get("Service", "Group") in groups
    for unit, user in ((hw, hw_user), (kiosk, kiosk_user)):
        for group in unit.words("Service", "SupplementaryGroups"):
            assert (user, group) in members, (user, group)
    assert (hw_user, hw.get("Service", "Group")) in members
    for f in lines:
        if f[0] == "u":
            assert f[-1] == "/usr/sbin/nologin", f  # no login shell


def test_install_sh_makes_users_with_sysusers_not_useradd():
    script = INSTALL.read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert 'systemd-sysusers "$SYSUSERS_DEST"' in code
    for tool in ("useradd", "groupadd", "usermod"):
        assert tool not in code, tool


def test_systemd_sysusers_creates_the_users_in_a_scratch_root(out, hw, kiosk, tmp_path):
    exe = shutil.which("systemd-sysusers")
    if exe is None:
        pytest.skip("systemd-sysusers not installed (apt-get install systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # What Raspberry Pi OS has before the install: the device groups, an older install's user.
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "mck-hw:x:990:990:old:/var/lib/microcurrent-kiosk:/usr/sbin/nologin\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\nvideo:x:44:\ninput:x:101:\nrender:x:102:\ngpio:x:997:\nspi:x:998:\n"
        "mck-hw:x:990:\n"
    )
    conf = out / SYSUSERS
    for run in range(2):  # the second run changes nothing
        proc = subprocess.run(
            [exe, f"--root={root}", str(conf)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if run == 0:
            first = ((root / "etc" / "passwd").read_text(), (root / "etc" / "group").read_text())
    second = ((root / "etc" / "passwd").read_text(), (root / "etc" / "group").read_text())
    assert second == first
    passwd = {line.split(":")[0]: line.split(":") for line in second[0].splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in second[1].splitlines()}
    hw_user, kiosk_user = hw.get("Service", "User"), kiosk.get("Service", "User")
    assert passwd[hw_user][2] == "990"  # the existing user is kept as it was
    assert passwd[kiosk_user][6] == "/usr/sbin/nologin"
    assert passwd[kiosk_user][5] == "/var/lib/microcurrent-kiosk-ui"
    assert int(passwd[kiosk_user][2]) < 1000  # a system user
    for unit, user in ((hw, hw_user), (kiosk, kiosk_user)):
        for g in [unit.get("Service", "Group")] if unit is hw else []:
            assert user in group[g][3].split(","), (user, g)
        for g in unit.words("Service", "SupplementaryGroups"):
            assert user in group[g][3].split(","), (user, g)
    assert kiosk_user not in group["spi"][3].split(",")  # the UI never gets SPI or GPIO
    assert kiosk_user not in group["gpio"][3].split(",")


# --- pinned, hashed dependencies -------------------------------------------------------------


def _requirements(path: Path) -> dict[str, list[str]]:
    """name==version -> its sha256 hashes, from a pip requirements file with --hash lines."""
    reqs: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw.startswith(" "):
            current = line.rstrip("\\").strip()
            reqs[current] = []
        else:
            m = re.fullmatch(r"--hash=sha256:([0-9a-f]{64})( \\)?", line)
            assert m, f"{path.name}: not a sha256 hash line: {raw!r}"
            reqs[current].append(m.group(1))
    return reqs


def test_pi_requirements_are_pinned_and_hashed():
    reqs = _requirements(PI_TXT)
    names = {r.split("==")[0].lower() for r in reqs}
    # Everything pyproject.toml asks for on the Pi, and the build backend.
    for name in ("gpiozero", "pyyaml", "pydantic", "spidev", "lgpio", "kivy", "setuptools"):
        assert name in names, name
    for req, hashes in reqs.items():
        assert re.fullmatch(r"[a-z0-9._-]+==[A-Za-z0-9.+!-]+", req), f"not pinned: {req}"
        assert hashes, f"no hash: {req}"
    build = _requirements(PI_BUILD_TXT)
    assert [r.split("==")[0] for r in build] == ["setuptools"]
    for req, hashes in build.items():
        assert req in reqs and reqs[req] == hashes  # the same setuptools in both files


def test_install_sh_installs_only_hashed_requirements():
    code = "\n".join(
        line for line in INSTALL.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    pip_lines = [line for line in code.splitlines() if '"${pip[@]}" install' in line]
    assert len(pip_lines) == 3, pip_lines
    assert '--require-hashes --no-deps -r "$req/pi-build.txt"' in pip_lines[0]
    assert '--require-hashes --no-build-isolation -r "$req/pi.txt"' in pip_lines[1]
    # The project itself: nothing from an index, no dependency resolved behind the hashes.
    assert "--no-deps" in pip_lines[2] and "--no-index" in pip_lines[2]
    assert "--upgrade pip" not in code  # pip itself would be an unhashed download


# --- the hw unit's syscall filter and MemoryDenyWriteExecute, applied for real -----------------


def _expand_filter(unit: Unit) -> set[str]:
    """The syscalls a unit's SystemCallFilter= lines allow: the first (allow) line's sets, minus
    every later ``~`` line's, each @group expanded by ``systemd-analyze syscall-filter``."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if not line[0].isspace():
            current = groups.setdefault(word, [])
        elif current is not None:
            current.append(word)

    def expand(names: list[str]) -> set[str]:
        result: set[str] = set()
        for name in names:
            if name.startswith("@"):
                assert name in groups, f"unknown syscall group {name}"
                result |= expand(groups[name])
            else:
                result.add(name)
        return result

    allowed: set[str] = set()
    for value in unit.all("Service", "SystemCallFilter"):
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    return allowed


@pytest.fixture(scope="module")
def sandbox(hw, tmp_path_factory) -> list[str]:
    """``[sandbox, allowlist, mdwe|-]``: prefix a command with it to run it under the unit's
    filter (EPERM for anything else) and, when the unit sets it, MemoryDenyWriteExecute."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs a C compiler and systemd-analyze (apt-get install gcc systemd)")
    if not Path("/usr/include/seccomp.h").exists():
        pytest.skip("needs libseccomp's header (apt-get install libseccomp-dev)")
    base = tmp_path_factory.mktemp("seccomp")
    exe = base / "seccomp_sandbox"
    src = Path(__file__).parent / "helpers" / "seccomp_sandbox.c"
    proc = subprocess.run(
        [cc, "-O2", "-o", str(exe), str(src), "-lseccomp"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    allow = base / "allow.txt"
    allow.write_text("\n".join(sorted(_expand_filter(hw))) + "\n")
    mdwe = "mdwe" if hw.get("Service", "MemoryDenyWriteExecute") == "yes" else "-"
    return [str(exe), str(allow), mdwe]


@pytest.mark.parametrize(
    ("code", "denied"),
    [
        # W+X memory (a JIT, a libffi closure): MemoryDenyWriteExecute=yes.
        ("import mmap; mmap.mmap(-1, 4096, prot=7)", True),
        ("import os; os.setuid(0)", True),  # ~@privileged
        ("import os; os.chown('/', 0, 0)", True),  # ~@privileged
        ("import mmap; mmap.mmap(-1, 4096, prot=3)", False),  # plain R+W memory is fine
    ],
)
def test_the_sandbox_denies_what_the_unit_denies(sandbox, code, denied):
    proc = subprocess.run(
        [*sandbox, sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    if denied:
        assert proc.returncode == 1 and "PermissionError" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_daemon_runs_a_treatment_under_the_units_filter(sandbox, tmp_path):
    """The simulated daemon under the hw unit's SystemCallFilter= and MemoryDenyWriteExecute=:
    start-up, self-test, SCHED_FIFO, a treatment, history and export, SIGTERM, all with no
    denied call (a denied call is EPERM, which surfaces as an error in the log or a failure)."""

    class Sandboxed(Daemon):
        def argv(self) -> list[str]:
            return [*sandbox, *super().argv()]

    def scenario(factory) -> str:
        d = Sandboxed(factory.root, "hw")
        factory.daemons.append(d)  # stopped at exit
        d.start()
        c = d.client("kiosk")
        start_treatment(c, program="demo", level=2)
        keep_lease(c, 1.0)
        c.request("stop")
        renew_until(c, lambda s: s["state"] != "running" and s["output"] in OUTPUT_OFF, 15.0)
        assert c.request("history", limit=5), "the treatment was recorded"
        assert "demo" in c.request("export_csv")["csv"]
        assert d.terminate() == 0
        return d.log()

    log = run_scenario(tmp_path, scenario)
    assert "Operation not permitted" not in log and "Traceback" not in log, log
    # The filter must not be what refuses SCHED_FIFO: where this host grants it unsandboxed, the
    # sandboxed daemon gets it too.
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode:
        assert "REALTIME loop thread: SCHED_FIFO 20 refused" in log, log
    else:
        assert "REALTIME loop thread: granted" in log, log
