"""Faults through the real kiosk: the real Kivy app rendered headless (tests/kiosk/kiosk_driver.py)
against the real daemon on the simulated board, tapping real buttons (its own and the sim
panel's), and real processes killed with SIGKILL.

One run, shared by the tests below (a kiosk process costs seconds to start):

1. kiosk A taps through first use, starts the demo, presses the e-stop in the sim panel (fault
   screen; a hold refused while pressed; released; a hold acknowledges; home), blocks its own UI
   thread for 2 s mid-treatment (the lease lapses, the daemon cuts, the kiosk shows it), then
   runs again while this test kills the daemon with SIGKILL (service lost) and starts it again
   (the latched fault), and finally runs again while this test kills kiosk A with SIGKILL;
2. this test reads the daemon: the output cut by the lease, the record ended by the fault;
3. kiosk B starts: the latched fault, never a resume; acknowledged; then the issue's tap-through
   with two level-ups, a short lift-off (the contact prompt, the re-contact ramp) and a long one
   (paused, resumed by a tap), to the summary with the dose and the history record.

Judged by the order of what the kiosk observed and sent (its timeline) and by the outcome.
The screenshots stay in the pytest tmp folder (printed with -s)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: daemon_helpers

from daemon_helpers import (
    HostTimingFault,
    run_scenario,  # noqa: E402
    subprocess_env,
)

from hw.safety import FAULT_TEXT, Fault  # noqa: E402
from hw.service.client import Client  # noqa: E402
from kiosk import strings as S  # noqa: E402

# One scenario run is ~50 s on a quiet 2-core host. These ran skipped until 2026-12-02: the
# kiosk's frames on SDL's offscreen software GL held the UI thread 0.4-5 s (Mesa's backlog of
# unrasterized frames, fixed in kiosk/display.py) and the first tap imported kivy.tests.common
# mid-treatment (180-400 ms, now at start-up), both past the 300 ms lease. On a host loaded by
# other work (load 5-7 on 2 cores) the kiosk can still wait past the lease for a CPU, and the
# daemon then rightly ends the treatment with LEASE_EXPIRED: that fails the test, as it should.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
DRIVER = Path(__file__).resolve().with_name("kiosk_driver.py")
PROCESS_BOUND_S = 150.0  # an upper bound for one kiosk process's scenario, not a speed check
LIFTED_MAX_S = 3  # the site file lowers limits.lifted_max_s (30 s) so a long lift is short


def spawn_kiosk(sock: Path, out: Path, scenario: str) -> subprocess.Popen:
    env = subprocess_env()
    env.setdefault("KIVY_HOME", str(out / "kivy-home"))
    for k in ("KIVY_NO_ARGS", "KIVY_NO_CONSOLELOG", "KIVY_NO_FILELOG"):
        env[k] = "1"
    with open(out / f"{scenario}.stderr", "wb") as err:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, str(DRIVER), str(sock), str(out), scenario],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=out,
            text=True,
        )


def lines(proc: subprocess.Popen, bound_s: float = PROCESS_BOUND_S):
    """The driver's stdout lines as they come; HostTimingFault on a LOOP_STALL."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            return
        line = line.strip()
        if line.startswith("HOST_TIMING"):
            proc.wait(10)
            raise HostTimingFault(line)
        yield line
    proc.kill()
    raise AssertionError(f"the kiosk driver did not finish within {bound_s} s")


def report(out: Path, scenario: str) -> dict:
    return json.loads((out / f"{scenario}.json").read_text())


def daemon_view(sock: Path) -> dict:
    with Client(str(sock), "probe") as c:
        return {
            "status": c.request("status"),
            "events": c.request("events", limit=50),
            "history": c.request("history", limit=10),
        }


def scenario(factory):
    out = factory.root
    site = out / "site.yaml"
    site.write_text(f"limits:\n  lifted_max_s: {LIFTED_MAX_S}\n")
    d = factory.make(config=site)
    d.start()
    got: dict = {"out": out, "marks_a": [], "marks_b": []}
    a = spawn_kiosk(d.socket, out, "faults")
    try:
        for line in lines(a):
            got["marks_a"].append(line)
            if line == "MARK kill_daemon":
                d.kill9()
            elif line == "MARK restart_daemon":
                d.spawn()
            elif line == "MARK kill_kiosk":  # printed with the treatment running
                os.kill(a.pid, signal.SIGKILL)
                got["kiosk_a_killed"] = True
            elif line.startswith(("FAILED", "DONE")):
                break
    finally:
        if a.poll() is None:
            a.kill()
        a.wait(10)
    got["a"] = report(out, "faults")
    if not got.get("kiosk_a_killed"):
        raise AssertionError(f"kiosk A: {got['a']['result']} {got['marks_a']}")
    # The daemon after kiosk A's death: wait (bounded) for the engine to take the trip in hand.
    deadline = time.monotonic() + 10.0
    while True:
        view = daemon_view(d.socket)
        if view["status"]["state"] == "fault" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    got["after_kill"] = view
    b = spawn_kiosk(d.socket, out, "restart")
    try:
        for line in lines(b):
            got["marks_b"].append(line)
            if line == "MARK fault_shown":
                got["while_b_shows_fault"] = daemon_view(d.socket)["status"]
            elif line.startswith(("FAILED", "DONE")):
                break
        b.wait(20)
    finally:
        if b.poll() is None:
            b.kill()
    got["b"] = report(out, "restart")
    got["end"] = daemon_view(d.socket)
    return got


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kiosk-faults")
    got = run_scenario(root, scenario)
    print(f"kiosk fault screenshots in {got['out']}")
    return got


def after(timeline: list, start: int, kind: str, value=None) -> int:
    """The index of the first ``[kind, value]`` at or after ``start`` (value None: any)."""
    for i in range(start, len(timeline)):
        k, v = timeline[i]
        if k == kind and (value is None or v == value):
            return i
    raise AssertionError(f"{kind}={value!r} not seen after #{start}: {timeline[start:][:60]}")


def between(timeline: list, lo: int, hi: int, kind: str) -> list:
    return [v for k, v in timeline[lo:hi] if k == kind]


def screen_at(timeline: list, i: int) -> str | None:
    """The screen shown at entry ``i`` (the last screen change at or before it)."""
    shown = between(timeline, 0, i + 1, "screen")
    return shown[-1] if shown else None


def fault_events(run: dict, code: str) -> list[str]:
    """The daemon's recorded fault events with ``code`` (message and detail), oldest first."""
    events = run["end"]["events"]  # the newest 50, oldest first
    return [e["message"] for e in events if (e["kind"], e["code"]) == ("fault", code)]


def words(code: Fault) -> tuple[str, str]:
    return FAULT_TEXT[code]


def test_injected_fault_shows_the_fault_screen_and_needs_the_acknowledge(run):
    tl = run["a"]["timeline"]
    i = after(tl, 0, "mark", "estop")
    inject = after(tl, i, "sent", "sim inject estop")
    fault = after(tl, inject, "fault", "ESTOP")
    shown = after(tl, fault, "screen", "fault")
    shot = run["a"]["shots"]["fault_estop"]
    message, action = words(Fault.ESTOP)
    assert shot["screen"] == "fault" and shot["output"] == "tripped"
    assert S.FAULT_TITLE in shot["texts"] and message in shot["texts"] and action in shot["texts"]
    # A hold while the e-stop is still pressed: refused, the fault screen stays.
    ack1 = after(tl, shown, "sent", "acknowledge")
    refused = after(tl, ack1, "ack_message")
    assert "release the e-stop" in tl[refused][1]
    assert run["a"]["shots"]["fault_estop_refused"]["screen"] == "fault"
    assert between(tl, shown + 1, refused, "screen") == []  # still the fault screen
    # Released in the panel, held again: acknowledged, the self-test runs by itself, home.
    clear = after(tl, refused, "sent", "sim clear estop")
    ack2 = after(tl, clear, "sent", "acknowledge")
    self_test = after(tl, ack2, "sent", "self_test")
    after(tl, self_test, "state", "self_test")
    ready = after(tl, self_test, "state", "ready")
    nxt = after(tl, ready, "mark", "block")
    assert between(tl, ready, nxt, "screen")[:1] == ["home"]  # home first (then the next demo)
    assert "start" not in between(tl, shown, ready, "sent")  # nothing restarted on its own
    assert fault_events(run, "ESTOP")


def test_ui_thread_blocked_2s_the_lease_lapses_and_the_kiosk_shows_it(run):
    tl = run["a"]["timeline"]
    block = after(tl, 0, "mark", "block")
    assert between(tl, after(tl, 0, "mark", "estop"), block, "state")[-1] == "running"
    unblocked = after(tl, block, "unblocked")  # noted by the sleeping callback as it returned
    fault = after(tl, unblocked, "fault", "LEASE_EXPIRED")
    after(tl, fault, "screen", "fault")
    shot = run["a"]["shots"]["fault_ui_blocked"]
    message, action = words(Fault.LEASE_EXPIRED)
    assert message in shot["texts"] and action in shot["texts"] and shot["output"] == "tripped"
    ack = after(tl, fault, "sent", "acknowledge")
    after(tl, ack, "screen", "home")
    # The daemon's loop cut because no renewal came (not because a connection closed).
    assert "not renewed" in fault_events(run, "LEASE_EXPIRED")[0]


def test_daemon_killed_mid_treatment_service_lost_then_the_latched_fault(run):
    tl = run["a"]["timeline"]
    kill = after(tl, 0, "mark", "kill_daemon")
    assert between(tl, after(tl, 0, "mark", "block"), kill, "state")[-1] == "running"
    lost = after(tl, kill, "service_lost", True)
    shot = run["a"]["shots"]["service_lost_live"]
    assert S.SERVICE_LOST in shot["texts"] and S.SERVICE_LOST_HINT in shot["texts"]
    restart = after(tl, lost, "mark", "restart_daemon")
    back = after(tl, restart, "connected", True)
    fault = after(tl, back, "fault", "UNACKNOWLEDGED")
    after(tl, fault, "screen", "fault")
    assert "start" not in between(tl, kill, fault, "sent")
    shot = run["a"]["shots"]["fault_after_daemon_restart"]
    message, _action = words(Fault.UNACKNOWLEDGED)
    assert message in shot["texts"] and S.FAULT_UNACK_ACTION in shot["texts"]  # where History is
    assert S.SERVICE_LOST not in shot["texts"] and shot["output"] == "tripped"
    ack = after(tl, fault, "sent", "acknowledge")
    after(tl, ack, "screen", "home")


def test_kiosk_killed_mid_treatment_the_daemon_cuts_and_a_new_kiosk_shows_the_fault(run):
    tl = run["a"]["timeline"]
    kill = after(tl, 0, "mark", "kill_kiosk")
    assert between(tl, after(tl, 0, "mark", "restart_daemon"), kill, "state")[-1] == "running"
    # The daemon cut the output: the controller's lease is gone (its socket closed with it).
    st = run["after_kill"]["status"]
    assert st["state"] == "fault" and st["output"] == "tripped", st
    assert st["fault"]["code"] == "LEASE_EXPIRED" and st["lease_holder"] is None, st
    # (A killed process's socket closes at once: the daemon cut on the lost controller, before
    # the 300 ms ran out; either way the same latched LEASE_EXPIRED.)
    assert len(fault_events(run, "LEASE_EXPIRED")) == 2  # the blocked UI's, and this one
    last = run["after_kill"]["history"][0]
    assert last["end_reason"] == "fault", last
    # Kiosk B: the latched fault first, the output off while it shows, never a resume.
    tlb = run["b"]["timeline"]
    fault_screen = after(tlb, 0, "screen", "fault")
    assert [s for s in between(tlb, 0, fault_screen, "screen") if s != "startup"] == []
    shot = run["b"]["shots"]["fault_after_kiosk_restart"]
    message, action = words(Fault.LEASE_EXPIRED)
    # Whichever cut first names the fault: the closed socket ("controller ... disconnected": the
    # kiosk says the screen closed) or, when the killed kiosk's last renewals were already late
    # (a loaded host: a fresh-clone run met it), the lease's own 300 ms ("not renewed").
    detail = st["fault"]["detail"]
    expected = S.FAULT_SCREEN_CLOSED if detail.endswith("disconnected") else message
    assert "not renewed" in detail or detail.endswith("disconnected"), detail
    assert expected in shot["texts"] and action in shot["texts"], (detail, shot["texts"])
    assert run["while_b_shows_fault"]["state"] == "fault"
    assert run["while_b_shows_fault"]["output"] == "tripped"
    ack = after(tlb, fault_screen, "sent", "acknowledge")
    sent_before_ack = between(tlb, 0, ack, "sent")
    assert not {"start", "resume", "level_up", "set_level"} & set(sent_before_ack)
    assert set(between(tlb, 0, ack, "output")) <= {"tripped", "off"}


def test_end_to_end_treatment_with_lift_offs_from_the_sim_panel(run):
    tl = run["b"]["timeline"]
    start = after(tl, after(tl, 0, "mark", "fault_shown"), "sent", "start")
    up1 = after(tl, start, "sent", "level_up")
    after(tl, up1 + 1, "sent", "level_up")
    lift = after(tl, after(tl, 0, "mark", "lift"), "sent", "sim inject lift_off")
    # The short lift: the contact prompt over the treatment screen, timers paused.
    shot = run["b"]["shots"]["lift_off_live"]
    assert shot["screen"] == "treatment" and S.CONTACT_LOST in shot["texts"], shot
    assert shot["output"] == "lifted" and S.STOP in shot["texts"]
    clear = after(tl, lift, "sent", "sim clear lift_off")
    shot = run["b"]["shots"]["recontact_live"]
    assert shot["screen"] == "treatment" and S.RECONTACT in shot["texts"], shot
    long_lift = after(tl, after(tl, clear, "mark", "long_lift"), "sent", "sim inject lift_off")
    # No trip anywhere in the tap-through (after the acknowledged start-up fault).
    paused = after(tl, long_lift, "state", "paused")
    shot = run["b"]["shots"]["paused_live"]
    assert shot["screen"] == "treatment" and S.PAUSED in shot["texts"] and S.RESUME in shot["texts"]
    assert "resume" not in between(tl, start, paused, "sent")
    tap = after(tl, paused, "tap", S.RESUME)
    resume = after(tl, tap, "sent", "resume")  # only the tap resumed it
    running = after(tl, resume, "state", "running")
    summary = after(tl, running, "screen", "summary")
    assert [f for f in between(tl, start, summary, "fault") if f] == []
    s = run["b"]["summary"]
    assert s["end_reason"] == "finished" and s["program"] == "demo", s
    assert s["charge_uc"] > 0 and s["mean_current_ua"] > 0 and s["active_s"] > 0, s
    assert 3 in between(tl, start, lift, "level_seen")  # level 1, then two taps on +
    texts = run["b"]["shots"]["summary_live"]["texts"]
    assert S.SUMMARY_TITLE["finished"] in texts
    assert any(S.SUMMARY_CHARGE in t and "mC" in t for t in texts), texts  # the dose
    rec = run["b"]["history"][0]
    assert rec["end_reason"] == "finished" and rec["program_id"] == "demo", rec
    assert run["b"]["shots"]["history_live"]["screen"] == "history"
    assert run["b"]["result"] == "done"
