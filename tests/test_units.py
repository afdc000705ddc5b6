"""The systemd units and the installer: rendered exactly as a real install writes them.

The units are rendered by `scripts/install.sh --render-only`, the same function a real install
uses, then checked by `systemd-analyze verify` and by static rules for the safety-relevant
settings (watchdog, restart policy, start limit, device allow-list, no --sim).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "scripts" / "install.sh"
HW = "microcurrent-hw.service"
KIOSK = "microcurrent-kiosk.service"
PLACEHOLDER = re.compile(r"@[A-Za-z_]+@")


def _clean_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without any MCK_* setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCK_")}
    env.update(overrides)
    return env


def _fake_prefix(base: Path) -> Path:
    """A prefix whose venv/bin/python exists: verify checks that ExecStart= is executable."""
    prefix = base / "prefix"
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "python").symlink_to(sys.executable)
    return prefix


def _render(outdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--render-only", str(outdir)],
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def _parse(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys stay repeated."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


class Unit:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = path.read_text()
        self.items = _parse(self.text)

    def all(self, section: str, key: str) -> list[str]:
        return [v for s, k, v in self.items if s == section and k == key]

    def get(self, section: str, key: str) -> str:
        values = self.all(section, key)
        assert len(values) == 1, f"{self.path.name}: [{section}] {key}= set {len(values)} times"
        return values[0]

    def words(self, section: str, key: str) -> list[str]:
        return [w for v in self.all(section, key) for w in v.split()]

    def env(self) -> dict[str, str]:
        return dict(w.split("=", 1) for w in self.words("Service", "Environment"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("units")
    prefix = _fake_prefix(base)
    outdir = base / "out"
    proc = _render(outdir, MCK_PREFIX=str(prefix))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {
        "prefix": prefix,
        "outdir": outdir,
        "hw": Unit(outdir / HW),
        "kiosk": Unit(outdir / KIOSK),
    }


# --- rendering -------------------------------------------------------------------------------


def test_render_only_writes_exactly_the_two_units_and_the_sysusers_file(rendered):
    names = sorted(p.name for p in rendered["outdir"].iterdir())
    assert names == [HW, KIOSK, "microcurrent-kiosk.sysusers.conf"]


def test_no_placeholder_left(rendered):
    for name in ("hw", "kiosk"):
        unit = rendered[name]
        assert not PLACEHOLDER.findall(unit.text), f"{unit.path.name}: unsubstituted placeholder"


def test_render_is_repeatable(rendered, tmp_path):
    proc = _render(tmp_path, MCK_PREFIX=str(rendered["prefix"]))
    assert proc.returncode == 0, proc.stderr
    for name in (HW, KIOSK):
        assert (tmp_path / name).read_text() == (rendered["outdir"] / name).read_text()


def test_variables_reach_the_units(tmp_path):
    proc = _render(
        tmp_path,
        MCK_PREFIX="/srv/mck",
        MCK_HW_USER="hwu",
        MCK_KIOSK_USER="uiu",
        MCK_GROUP="shared",
        MCK_CONFIG_DIR="/etc/mck-test",
        MCK_SOCKET="/run/mck-test/d.sock",
        MCK_STATE_DIR="/var/lib/mck-test",
        MCK_KIOSK_STATE_DIR="/var/lib/mck-test-ui",
    )
    assert proc.returncode == 0, proc.stderr
    hw, kiosk = Unit(tmp_path / HW), Unit(tmp_path / KIOSK)
    assert hw.get("Service", "ExecStart") == (
        "/srv/mck/venv/bin/python -m hw --config /etc/mck-test/site.yaml"
        " --socket /run/mck-test/d.sock --state-dir /var/lib/mck-test"
    )
    assert hw.get("Service", "User") == "hwu"
    assert hw.get("Service", "Group") == "shared"
    assert hw.get("Service", "RuntimeDirectory") == "mck-test"
    assert hw.get("Service", "StateDirectory") == "mck-test"
    assert kiosk.get("Service", "ExecStart") == (
        "/srv/mck/venv/bin/python -m kiosk --socket /run/mck-test/d.sock"
    )
    assert kiosk.get("Service", "User") == "uiu"
    assert "shared" in kiosk.words("Service", "SupplementaryGroups")
    assert kiosk.get("Service", "StateDirectory") == "mck-test-ui"
    assert kiosk.env()["KIVY_HOME"] == "/var/lib/mck-test-ui"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("MCK_SOCKET", "/tmp/hw.sock", "below /run/"),
        ("MCK_SOCKET", "/run/hw.sock", "below /run/"),
        ("MCK_STATE_DIR", "/srv/state", "below /var/lib/"),
        ("MCK_PREFIX", "/opt/with space", "absolute path"),
        ("MCK_PREFIX", "relative/path", "absolute path"),
        ("MCK_CONFIG_DIR", "/etc/%n", "absolute path"),
        ("MCK_HW_USER", "Root User", "user/group name"),
        ("MCK_START", "yes", "must be 0 or 1"),
        ("MCK_KIOSK_USER", "mck-hw", "must differ"),
    ],
)
def test_bad_variables_are_refused(tmp_path, var, value, message):
    proc = _render(tmp_path / "out", **{var: value})
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# --- systemd-analyze verify ------------------------------------------------------------------


def test_systemd_analyze_verify(rendered):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed: apt-get install systemd to verify the units")
    # Both files in one call, from the same directory: verify adds the directory of every unit
    # file it is given to its unit search path, so the kiosk's Wants=/After= on the hw unit
    # resolves to the rendered hw unit (tried: with Requires= and the hw file elsewhere it
    # fails with "Unit microcurrent-hw.service not found"). No SYSTEMD_UNIT_PATH needed.
    # It needs no running systemd and does not resolve User=/Group=, so users that exist only
    # after a real install are fine. ExecStart='s binary must exist: the fake prefix has it.
    # Problems in a unit (unknown key, bad value) are printed but leave the exit code at 0, so
    # every output line that names our files fails the test too. --recursive-errors=no keeps
    # the host's own units (getty@, systemd-user-sessions, ...) from deciding the exit code;
    # --man=no skips man page lookups.
    cmd = [exe, "verify"]
    help_text = subprocess.run(
        [exe, "verify", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for opt in ("--recursive-errors=no", "--man=no"):
        if opt.split("=")[0] in help_text:
            cmd.append(opt)
    outdir = rendered["outdir"]
    cmd += [str(outdir / HW), str(outdir / KIOSK)]
    proc = subprocess.run(
        cmd, cwd=outdir, capture_output=True, text=True, timeout=60, env=_clean_env()
    )
    output = proc.stdout + proc.stderr
    print(" ".join(cmd))
    print(output)
    ours = [
        line
        for line in output.splitlines()
        if str(outdir) in line or "microcurrent-" in line or str(rendered["prefix"]) in line
    ]
    assert proc.returncode == 0, output
    assert not ours, "systemd-analyze verify complained about our units:\n" + "\n".join(ours)


# --- static rules: hardware daemon -----------------------------------------------------------


def test_hw_is_notify_with_watchdog(rendered):
    hw = rendered["hw"]
    assert hw.get("Service", "Type") == "notify"
    assert hw.get("Service", "NotifyAccess") == "main"
    assert hw.get("Service", "WatchdogSec") == "2s"


def test_hw_restart_policy_and_start_limit(rendered):
    hw = rendered["hw"]
    assert hw.get("Service", "Restart") == "on-failure"
    assert hw.get("Service", "RestartSec") == "3"
    # The start limit belongs in [Unit]; in [Service] it is a deprecated, ignored-looking spot.
    # Ten starts within 120 s (at least 27 s of retries at boot), then failed for good.
    assert hw.get("Unit", "StartLimitIntervalSec") == "120"
    assert hw.get("Unit", "StartLimitBurst") == "10"
    assert not hw.all("Service", "StartLimitBurst")
    assert not hw.all("Service", "StartLimitIntervalSec")
    assert hw.get("Service", "KillSignal") == "SIGTERM"
    assert hw.get("Service", "TimeoutStopSec") == "5"


def test_hw_execstart_is_the_real_daemon(rendered):
    hw = rendered["hw"]
    exec_start = hw.get("Service", "ExecStart")
    assert "--sim" not in exec_start
    assert exec_start == (
        f"{rendered['prefix']}/venv/bin/python -m hw"
        " --config /etc/microcurrent-kiosk/site.yaml"
        " --socket /run/microcurrent/hw.sock"
        " --state-dir /var/lib/microcurrent-kiosk"
    )
    # Nothing but the daemon runs: no pre/post hooks that could (re)start a treatment.
    execs = [k for s, k, _ in hw.items if k.startswith("Exec")]
    assert execs == ["ExecStart"]


def test_hw_devices_are_an_allow_list(rendered):
    hw = rendered["hw"]
    assert hw.get("Service", "DevicePolicy") == "closed"
    assert sorted(hw.all("Service", "DeviceAllow")) == sorted(["char-spi rw", "char-gpiochip rw"])
    # PrivateDevices=yes would hide /dev/spidev* and /dev/gpiochip* from the daemon.
    assert hw.all("Service", "PrivateDevices") in ([], ["no"], ["false"])


def test_hw_user_groups_and_directories(rendered):
    hw = rendered["hw"]
    assert hw.get("Service", "User") == "mck-hw"
    assert hw.get("Service", "Group") == "mck"
    assert {"gpio", "spi"} <= set(hw.words("Service", "SupplementaryGroups"))
    assert hw.get("Service", "RuntimeDirectory") == "microcurrent"
    assert hw.get("Service", "RuntimeDirectoryMode") == "0750"
    assert hw.get("Service", "StateDirectory") == "microcurrent-kiosk"


def test_hw_hardening(rendered):
    hw = rendered["hw"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
    }.items():
        assert hw.get("Service", key) == value, key


def test_hw_realtime_is_allowed_not_forced(rendered):
    hw = rendered["hw"]
    assert hw.get("Service", "LimitRTPRIO") == "20"
    assert not hw.all("Service", "CPUSchedulingPolicy")  # the daemon asks for SCHED_FIFO itself
    assert hw.all("Service", "RestrictRealtime") in ([], ["no"])  # would refuse SCHED_FIFO
    assert hw.all("Service", "AmbientCapabilities") in ([], [""])


# --- static rules: kiosk ---------------------------------------------------------------------


def test_kiosk_restarts_forever_after_the_daemon(rendered):
    kiosk = rendered["kiosk"]
    assert kiosk.get("Service", "Restart") == "always"
    assert kiosk.get("Service", "RestartSec") == "2"
    assert kiosk.get("Unit", "StartLimitIntervalSec") == "0"
    assert HW in kiosk.words("Unit", "Wants")
    assert HW in kiosk.words("Unit", "After")
    assert HW not in kiosk.words("Unit", "Requires")  # a failed daemon must not hide the UI
    assert HW not in kiosk.words("Unit", "BindsTo")


def test_kiosk_talks_to_the_daemon_socket(rendered):
    hw, kiosk = rendered["hw"], rendered["kiosk"]
    exec_start = kiosk.get("Service", "ExecStart")
    python = f"{rendered['prefix']}/venv/bin/python"
    assert exec_start == f"{python} -m kiosk --socket /run/microcurrent/hw.sock"
    assert "--sim" not in exec_start
    socket_dir = "/run/" + hw.get("Service", "RuntimeDirectory")
    assert exec_start.split("--socket ")[1].rsplit("/", 1)[0] == socket_dir
    # The socket is group-owned by the daemon's Group=; the kiosk must be in that group.
    assert hw.get("Service", "Group") in kiosk.words("Service", "SupplementaryGroups")
    assert {"video", "render", "input"} <= set(kiosk.words("Service", "SupplementaryGroups"))


def test_kiosk_kms_environment(rendered):
    env = rendered["kiosk"].env()
    assert env["SDL_VIDEODRIVER"] == "kmsdrm"
    assert env["KIVY_WINDOW"] == "sdl2"
    assert env["KIVY_GL_BACKEND"] == "sdl2"
    assert env["KIVY_NO_ARGS"] == "1"
    assert env["KIVY_NO_FILELOG"] == "1"
    assert env["KIVY_HOME"] == "/var/lib/microcurrent-kiosk-ui"


def test_kiosk_vt_and_devices(rendered):
    kiosk = rendered["kiosk"]
    tty = kiosk.get("Service", "TTYPath")
    assert tty == "/dev/tty1"
    assert "getty@tty1.service" in kiosk.words("Unit", "Conflicts")
    for key in ("TTYReset", "TTYVHangup", "TTYVTDisallocate"):
        assert kiosk.get("Service", key) == "yes"
    # stdin is the VT; logs must still reach the journal.
    assert kiosk.get("Service", "StandardOutput") == "journal"
    assert kiosk.get("Service", "StandardError") == "journal"
    assert kiosk.get("Service", "DevicePolicy") == "closed"
    assert sorted(kiosk.all("Service", "DeviceAllow")) == sorted(
        ["char-drm rw", "char-input r", f"{tty} rw"]
    )
    assert not any("spidev" in v or "gpiochip" in v for v in kiosk.all("Service", "DeviceAllow"))
    assert kiosk.all("Service", "PrivateDevices") in ([], ["no"], ["false"])
    assert kiosk.get("Service", "MemoryMax") == "400M"


def test_both_units_run_unprivileged(rendered):
    for name in ("hw", "kiosk"):
        unit = rendered[name]
        assert unit.get("Service", "User") not in ("", "root", "0"), name
        assert unit.get("Service", "NoNewPrivileges") == "yes", name
        assert unit.get("Install", "WantedBy") == "multi-user.target", name


# --- the installer script --------------------------------------------------------------------


def test_install_sh_syntax():
    proc = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_install_sh_shellcheck():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    proc = subprocess.run([exe, str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_sh_help_documents_every_variable():
    proc = subprocess.run(
        ["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    script = INSTALL.read_text()
    used = set(re.findall(r"\bMCK_[A-Z_]+\b", script))
    for var in sorted(used):
        assert f"{var}=" in proc.stdout, f"--help does not document {var}"


def test_install_sh_rejects_unknown_arguments():
    proc = subprocess.run(
        ["bash", str(INSTALL), "--bogus"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "unknown argument" in proc.stderr


def test_install_sh_refuses_without_root(tmp_path):
    prefix = tmp_path / "must-not-exist"
    cmd = ["bash", str(INSTALL)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop root")
        drop = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        readable = subprocess.run([*drop, "test", "-r", str(INSTALL)], timeout=30)
        if readable.returncode != 0:
            pytest.skip(f"user nobody cannot read {INSTALL}: cannot test the non-root refusal")
        cmd = drop + cmd
    proc = subprocess.run(
        cmd,
        env=_clean_env(MCK_PREFIX=str(prefix), MCK_START="1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "must run as root" in proc.stderr, proc.stdout + proc.stderr
    assert "--render-only" in proc.stderr  # tells the user the unprivileged alternative
    assert not prefix.exists()
