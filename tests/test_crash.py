"""Real processes, real ``kill -9``: of the controlling client, and of the daemon itself.

Times are CLOCK_MONOTONIC, which ``time.monotonic`` reads in every process alike: the daemon's board
mirror stamps its writes (``written_s``) and its last dead-man edge (``last_kick_s``) on that clock,
so the test can compare them with the moment it sent SIGKILL. They are, also on ``--sim-time``
(the board's own clock may lag behind; hw/hal/sim/mirror.py).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    OUTPUT_OFF,
    HostTimingFault,
    check_timing,
    expect_ready,
    keep_lease,
    mirror,
    quick_check,
    renew_until,
    run_scenario,
    start_treatment,
    subprocess_env,
    treatments,
    write_test_config,
)

from hw.config import load_config
from hw.service.client import DaemonError

pytestmark = pytest.mark.slow

CFG = load_config(None)
LEASE_MS = CFG.limits.lease_ms
DEADMAN_S = CFG.hardware.front_end.deadman_ms / 1000.0
TICK_MS = 1000.0 / CFG.loop.rate_hz
SCHED_SLACK_MS = 50.0
HELPERS = Path(__file__).resolve().with_name("daemon_helpers.py")
STRESS = Path(__file__).resolve().parents[1] / "scripts" / "stress-daemon-kill"


def _spawn_controller(sock: Path, program: str = "demo") -> subprocess.Popen:
    """The kiosk-like client process: starts ``program``, renews the lease, prints READY."""
    return subprocess.Popen(
        [sys.executable, str(HELPERS), "controller", str(sock), program, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=subprocess_env(),
        text=True,
    )


def _await_ready_line(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        if not sel.select(deadline - time.monotonic()):
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.strip() == "READY":
            return
        if line.startswith("HOST_TIMING"):
            proc.wait(5)
            raise HostTimingFault(line.strip())
    proc.kill()
    raise AssertionError(f"the controller did not report READY: {''.join(seen)}")


def _kill_controller_mid_treatment(daemons, program: str = "demo"):
    """Start ``program`` from a separate process and kill -9 it while the output runs.
    Returns (daemon, watcher client, t_kill, mirror once enable went low, status once faulted)."""
    d = daemons.start()
    expect_ready(d)
    watcher = d.client("watcher")
    ctl = _spawn_controller(d.socket, program)
    try:
        _await_ready_line(ctl)
        # Let it keep the lease for a few renewals: the output must still be on.
        time.sleep(0.35)
        st = check_timing(watcher.request("status"))
        assert st["state"] == "running" and st["lease_holder"] == "kiosk-under-test", st
        assert d.mirror()["enable"] is True
        t_kill = time.monotonic()
        os.kill(ctl.pid, signal.SIGKILL)
        ctl.wait(5)
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait(5)
    # Enable low, as the mirror saw it (poll it hard: it is a tiny mmap'd file).
    deadline = t_kill + 2.0
    m = d.mirror()
    while m["enable"] and time.monotonic() < deadline:
        m = d.mirror()
    st = renew_until(watcher, lambda s: s["state"] == "fault", 2.0, renew=False)
    check_timing(st)
    return d, watcher, t_kill, m, st


# --------------------------------------------------------------------------- Must-show 2a
def test_kill9_of_the_controlling_client_cuts_the_output(tmp_path, record_property):
    d, watcher, t_kill, m, st = run_scenario(tmp_path, _kill_controller_mid_treatment)
    assert st["fault"]["code"] == "LEASE_EXPIRED", st
    assert st["output"] in OUTPUT_OFF, st
    assert m["enable"] is False, m
    assert m["pid"] == d.rt_pid  # the board lives in the real-time process
    cut_ms = (m["written_s"] - t_kill) * 1000.0
    record_property("kill_to_enable_low_ms", round(cut_ms, 3))
    print(f"\nkill -9 of the controller -> enable low: {cut_ms:.2f} ms")
    assert 0.0 <= cut_ms <= LEASE_MS + 0.5 + SCHED_SLACK_MS, cut_ms
    # Nothing is driving any more: no dead-man edge after the cut.
    assert m["last_kick_s"] <= m["written_s"]
    assert mirror(d.mirror_path)["enable"] is False
    assert "controller kiosk-under-test disconnected" in d.log()


# --------------------------------------------------------------------------- recovery after a cut
def test_after_a_cut_mid_pulse_acknowledge_and_self_test_make_it_ready(tmp_path):
    # Regression: a trip while a phase was driven used to leave the frozen-ADC check with a stale
    # command step, so every acknowledge was followed at once by ADC_STUCK (fixed in 41702ae).
    cfg = write_test_config(tmp_path / "site.yaml")

    def scenario(daemons):
        # ``full-duty`` drives a phase at every instant, so the cut always lands mid-pulse (with
        # the demo it does about 80 % of the time).
        d, watcher, _, _, st = _kill_controller_mid_treatment(daemons, "full-duty")
        assert st["fault"]["code"] == "LEASE_EXPIRED", st
        watcher.request("acknowledge")
        time.sleep(0.2)  # 400 ticks with the output off: the old bug re-tripped within two
        st = check_timing(watcher.request("status"))
        assert st["state"] in ("idle", "ready") and st["fault"] is None, st
        watcher.request("self_test")
        st = renew_until(watcher, lambda s: s["state"] in ("ready", "fault"), 10.0, renew=False)
        check_timing(st)
        assert st["state"] == "ready" and st["fault"] is None, st
        time.sleep(0.3)
        st = watcher.request("status")
        assert st["state"] == "ready" and st["fault"] is None, st

    try:
        run_scenario(tmp_path, scenario, config=cfg)
    except DaemonError as e:  # the self-test is refused: the fault came back
        raise AssertionError(f"could not get back to ready: {e}") from None


# --------------------------------------------------------------------------- Must-show 2b
def test_kill9_of_the_service_mid_treatment(tmp_path, record_property):
    cfg = write_test_config(tmp_path / "site.yaml")
    figures = run_scenario(tmp_path, _kill_daemon_mid_treatment, config=cfg)
    record_property("relay_open_after_kill_ms", round(figures["relay_open_ms"], 3))
    print(
        f"\nkill -9 of the service: last dead-man edge {figures['kick_before_kill_ms']:.2f} ms "
        f"before the kill; relay open by kill + {figures['relay_open_ms']:.2f} ms"
    )


def _kill_daemon_mid_treatment(daemons) -> dict:
    d = daemons.start()
    expect_ready(d)
    c = d.client("kiosk")

    # Committed history before the crash: one finished, one stopped.
    c.request("start", program="short", level=4)
    st = renew_until(c, lambda s: s["state"] == "finished", 20.0)
    assert st["last_summary"]["end_reason"] == "finished", st
    finished_id = st["last_summary"]["treatment_id"]
    start_treatment(c, "short")
    c.request("stop")
    st = renew_until(c, lambda s: s["state"] == "finished", 5.0)
    assert st["last_summary"]["end_reason"] == "stopped", st
    stopped_id = st["last_summary"]["treatment_id"]
    # (The history writes the end of a record after the engine moved on: read until it has.)
    renew_until(c, lambda s: treatments(d.db_path)[stopped_id][0] == "stopped", 5.0, renew=False)
    before = treatments(d.db_path)
    assert before[finished_id][0] == "finished" and before[stopped_id][0] == "stopped"
    assert all(rec[0] is not None for rec in before.values()), before

    # The treatment that the crash interrupts.
    start_treatment(c, "demo")
    st = keep_lease(c, 0.6)
    assert st["state"] == "running", st
    charge_at_kill = st["charge_uc"]
    open_id = c.request("history", limit=1)[0]["id"]
    assert open_id not in before
    assert d.mirror()["enable"] is True

    t_before, t_after = d.kill9()  # the service; kill9 waits until the real-time process ended
    m = d.mirror()
    assert m["pid"] == d.rt_pid
    # The real-time process read EOF on its channel: it tripped (enable low, no kick after it)
    # and exited. The relay opened by the enable line, or by the dead-man if that came first.
    assert m["enable"] is False, m
    assert m["last_kick_s"] <= m["written_s"], m
    # The real-time process is alive and in control until it sees EOF (when the kernel has closed
    # the dead service's files); it must cut within the engine heartbeat's bound.
    relay_open_ms = (min(m["written_s"], m["relay_open_by_s"]) - t_before) * 1000.0
    assert relay_open_ms <= CFG.loop.service_heartbeat_ms, relay_open_ms
    # (EOF on the channel, or the PR_SET_PDEATHSIG backstop, whichever it saw first)
    assert "RT INTERNAL the service ended" in d.log()

    # Restart on the same state dir: output off, the interruption latched until acknowledged.
    d2 = daemons.make("restarted", state_dir=d.state_dir)
    st = d2.start()
    assert st["output"] in OUTPUT_OFF, st  # "tripped": the latched fault holds it off
    assert d2.mirror()["enable"] is False
    assert st["state"] == "fault" and st["fault"]["code"] == "UNACKNOWLEDGED", st
    assert str(open_id) in st["fault"]["detail"], st
    c2 = d2.client("kiosk")
    with pytest.raises(DaemonError) as e:
        c2.request("start", program="demo")
    assert e.value.code == "REFUSED"
    assert c2.request("status")["output"] in OUTPUT_OFF
    assert c2.request("acknowledge")["state"] == "idle"
    c2.request("self_test")
    st = renew_until(c2, lambda s: s["state"] in ("ready", "fault"), 10.0, renew=False)
    check_timing(st)
    assert st["state"] == "ready" and st["post"]["passed"] is True, st
    assert st["output"] == "off"

    # The committed history is intact, and the interrupted treatment is closed.
    assert quick_check(d.db_path) == "ok"
    after = treatments(d.db_path)
    for tid, rec in before.items():
        assert after.get(tid) == rec, (tid, rec, after.get(tid))
    assert after[open_id][0] == "interrupted", after[open_id]
    # It keeps the figures of its last checkpoint (taken every few seconds while it ran).
    assert 0.0 <= after[open_id][2] <= charge_at_kill + 1.0, (after[open_id], charge_at_kill)
    assert all(rec[0] is not None for rec in after.values()), after
    assert len(after) == len(before) + 1
    recs = {r["id"]: r for r in c2.request("history", limit=10)}
    assert recs[open_id]["end_reason"] == "interrupted" and recs[open_id]["ended_at"] is not None
    return {
        "relay_open_ms": relay_open_ms,
        "kick_before_kill_ms": (t_before - m["last_kick_s"]) * 1000.0,
    }


# --------------------------------------------------------------------------- the stress script
def test_stress_script_five_rounds(tmp_path):
    assert os.access(STRESS, os.X_OK)
    assert STRESS.read_text().startswith("#!/usr/bin/env python3\n")
    proc = subprocess.run(
        [sys.executable, str(STRESS), "--rounds", "5", "--seed", "1", "--sim-time", "--state-dir"]
        + [str(tmp_path / "stress"), "--max-run-s", "1.5"],
        capture_output=True,
        text=True,
        timeout=100,
        env=subprocess_env(),
    )
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert re.search(r"^\s*failures\s+0$", proc.stdout, re.M), proc.stdout[-3000:]
    assert quick_check(tmp_path / "stress" / "history.db") == "ok"


def test_host_timing_fault_is_not_what_a_lease_cut_reports():
    # A LEASE_EXPIRED cut is what a crash test expects, never a host-timing failure.
    with pytest.raises(HostTimingFault):
        check_timing({"fault": {"code": "LOOP_STALL", "detail": "x"}})
    assert check_timing({"fault": {"code": "LEASE_EXPIRED"}})["fault"]["code"] == "LEASE_EXPIRED"
