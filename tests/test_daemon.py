"""The daemon as a real process on the simulated board, driven over its Unix socket."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from daemon_helpers import (
    OUTPUT_OFF,
    check_timing,
    expect_ready,
    renew_until,
    retry_on_host_timing,
    start_treatment,
    subprocess_env,
)

from hw.client import DaemonError
from hw.config import load_config

pytestmark = pytest.mark.slow

LIMITS = load_config(None).limits


def _count_status(client, seconds: float) -> int:
    """Status lines a subscribed client receives in ``seconds`` (after draining what is queued)."""
    while client.read_message(0.01) is not None:
        pass
    n = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = client.read_message(left)
        if msg is not None and msg.get("event") == "status":
            n += 1
    return n


class LeaseKeeper(threading.Thread):
    """Renews the lease every 100 ms on its own client (a Client is not shared between threads)."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client = client
        self.stop_ev = threading.Event()
        self.errors: list[Exception] = []

    def run(self) -> None:
        while not self.stop_ev.is_set():
            try:
                self.client.request("lease")
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)
                return
            self.stop_ev.wait(0.1)

    def stop(self) -> None:
        self.stop_ev.set()
        self.join(5)


# --------------------------------------------------------------------------- Must-show 1
def test_demo_program_runs_to_the_end_and_is_recorded(tmp_path):
    retry_on_host_timing(tmp_path, _demo_to_the_end)


def _demo_to_the_end(daemons):
    d = daemons.start()
    expect_ready(d)
    c = d.client("kiosk")
    programs = {p["id"]: p for p in c.request("programs")["programs"]}
    demo = programs["demo"]
    assert 12 <= demo["duration_s"] <= 20  # the ~16 s showroom tour

    c.request("start", program="demo", level=4)
    st = renew_until(c, lambda s: s["state"] in ("finished", "fault"), demo["duration_s"] + 15)
    check_timing(st)
    assert st["state"] == "finished", st
    assert st["output"] == "off"

    # The events stream delivered the cues and the end.
    names = [e["event"] for e in c.events]
    assert "treatment_started" in names
    cues = [e["data"] for e in c.events if e["event"] == "cue"]
    assert {cue["kind"] for cue in cues} >= {"relocate", "next_zone"}, cues
    finished = [e["data"] for e in c.events if e["event"] == "treatment_finished"]
    assert len(finished) == 1 and finished[0]["end_reason"] == "finished", finished
    tid = finished[0]["treatment_id"]
    assert isinstance(tid, int)

    # The history holds the closed record with plausible dose figures.
    recs = [r for r in c.request("history", limit=10) if r["id"] == tid]
    assert len(recs) == 1
    r = recs[0]
    assert r == c.request("treatment", id=tid)
    assert r["program_id"] == "demo"
    assert r["end_reason"] == "finished" and r["ended_at"] is not None
    assert r["fault_code"] is None
    total = demo["duration_s"]
    assert abs(r["active_s"] - total) <= 0.2 * total, r
    assert r["charge_uc"] > 0
    expected_charge = r["mean_current_ua"] * r["active_s"]
    assert abs(r["charge_uc"] - expected_charge) <= 0.1 * r["charge_uc"], r
    assert 0 < r["peak_current_ua"] <= LIMITS.level_max_ua * 1.1, r
    assert abs(r["net_dc_charge_uc"]) < 0.01 * r["charge_uc"], r
    zones = {z["zone"]: z for z in r["zones"]}
    assert set(zones) == {s["zone"] for s in demo["steps"]} == {"cheeks", "forehead"}
    for z in zones.values():
        assert z["active_s"] > 0 and z["charge_uc"] > 0
        assert z["peak_current_ua"] <= LIMITS.level_max_ua * 1.1
    assert sum(z["charge_uc"] for z in zones.values()) == pytest.approx(r["charge_uc"], rel=0.01)
    # The event the kiosk showed matches the stored record.
    assert finished[0]["charge_uc"] == pytest.approx(r["charge_uc"], rel=1e-3, abs=0.01)
    assert "EVENT treatment_finished" in d.log()


# --------------------------------------------------------------------------- SIGTERM
def test_sigterm_during_treatment_cuts_output_and_closes_the_record(tmp_path):
    retry_on_host_timing(tmp_path, _sigterm_during_treatment)


def _sigterm_during_treatment(daemons):
    d = daemons.start()
    expect_ready(d)
    c = d.client("kiosk")
    start_treatment(c)
    check_timing(c.request("status"))
    assert d.mirror()["enable"] is True
    tid = c.request("history", limit=1)[0]["id"]
    assert c.request("treatment", id=tid)["end_reason"] is None  # open while it runs

    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(30)  # (how fast it exits is the unit's TimeoutStopSec; here: that it does)
    assert rc == 0, d.log()
    m = d.mirror()
    assert m["enable"] is False and m["dac_shdn_high"] is False, m
    assert "STOPPED output off" in d.log()
    assert not d.socket.exists()

    d2 = daemons.make("restarted", state_dir=d.state_dir)
    st = d2.start()
    assert st["state"] in ("fault", "ready"), st
    assert st["output"] in OUTPUT_OFF, st
    assert d2.mirror()["enable"] is False
    c2 = d2.client("kiosk")
    r = c2.request("treatment", id=tid)
    assert r["end_reason"] is not None and r["ended_at"] is not None, r
    assert all(x["end_reason"] is not None for x in c2.request("history"))
    st = c2.request("status")
    assert st["output"] in OUTPUT_OFF and st["state"] in ("fault", "ready")
    if st["state"] == "fault":
        assert st["fault"]["code"] == "UNACKNOWLEDGED", st


# --------------------------------------------------------------------------- bad config
def test_bad_config_exits_2_naming_file_and_key_without_a_socket(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("limits: {max_current_ua: 5000}\n")
    sock = tmp_path / "hw.sock"
    proc = subprocess.run(
        [sys.executable, "-m", "hw", "--sim", "--socket", str(sock), "--state-dir"]
        + [str(tmp_path / "state"), "--sim-mirror", str(tmp_path / "mirror"), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        env=subprocess_env(),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert str(bad) in out, out
    assert "limits.max_current_ua" in out, out
    assert "5000" in out
    assert not sock.exists()
    assert "READY" not in out


def _running_with_lease_keeper(daemons):
    """A ready daemon with the kiosk running a treatment and renewing its lease."""
    d = daemons.start()
    expect_ready(d)
    kiosk = d.client("kiosk")
    start_treatment(kiosk)
    keeper = LeaseKeeper(kiosk)
    keeper.start()
    return d, kiosk, keeper


# --------------------------------------------------------------------------- several clients
def test_observers_get_status_while_one_controller_holds_the_lease(tmp_path):
    retry_on_host_timing(tmp_path, _observers_and_one_controller)


def _observers_and_one_controller(daemons):
    d, kiosk, keeper = _running_with_lease_keeper(daemons)
    try:
        observers = [d.client(f"observer{i}", status=True) for i in range(3)]
        counts: dict[int, int] = {}

        def count(i: int) -> None:
            counts[i] = _count_status(observers[i], 1.0)

        threads = [threading.Thread(target=count, args=(i,)) for i in range(len(observers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        # Every observer keeps getting the stream (its rate is the bench's business).
        assert len(counts) == 3 and all(n >= 1 for n in counts.values()), counts
        check_timing(observers[0].last_status)
        for o in observers:
            assert o.last_status["lease_holder"] == "kiosk"
            assert o.last_status["state"] in ("running", "ramp_up")

        obs = observers[0]
        for cmd, args in [
            ("set_level", {"level": 2}),
            ("level_up", {}),
            ("level_down", {}),
            ("pause", {}),
            ("start", {"program": "demo"}),
            ("lease", {}),
        ]:
            with pytest.raises(DaemonError) as e:
                obs.request(cmd, **args)
            assert e.value.code == "LEASE_HELD", (cmd, e.value)
        assert obs.request("status")["state"] in ("running", "ramp_up")
        assert not keeper.errors

        # Anyone may stop.
        assert obs.request("stop")["state"] == "ramp_down"
        st = renew_until(obs, lambda s: s["state"] == "finished", 5.0, renew=False)
        assert st["output"] == "off" and st["last_summary"]["end_reason"] == "stopped"
        assert st["lease_holder"] is None
    finally:
        keeper.stop()
    assert not keeper.errors
    assert kiosk.request("status")["fault"] is None


# --------------------------------------------------------------------------- a slow client
def test_a_client_that_never_reads_does_not_slow_the_others(tmp_path):
    retry_on_host_timing(tmp_path, _slow_client)


def _slow_client(daemons):
    d, kiosk, keeper = _running_with_lease_keeper(daemons)
    watcher = d.client("watcher", status=True)
    asker = d.client("asker")
    try:
        # The slow client: a tiny receive buffer, subscribed to status, asks for big replies
        # (the program list, ~3 kB each) and never reads a byte.
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(str(d.socket))
        hello = {"id": 0, "cmd": "hello", "args": {"protocol": 1, "client": "slow", "status": True}}
        flood = json.dumps(hello) + "\n"
        flood += "".join(f'{{"id":{i},"cmd":"programs"}}\n' for i in range(1, 2001))
        slow.settimeout(10)

        def send() -> None:
            try:
                slow.sendall(flood.encode())
            except OSError:
                pass  # disconnected as too slow: allowed

        sender = threading.Thread(target=send, daemon=True)
        sender.start()

        # While the slow client sits there: the watcher keeps getting status lines (counted on
        # a thread, in three windows) and every one of the asker's requests gets its own, correct
        # reply. Latency figures belong to the bench (python -m hw.bench), not to a test.
        rates: list[int] = []
        answered = 0
        for _ in range(3):
            counter = threading.Thread(target=lambda: rates.append(_count_status(watcher, 1.0)))
            counter.start()
            while counter.is_alive():
                st = asker.request("status")
                assert st["state"] == "running" and st["fault"] is None, st
                answered += 1
                time.sleep(0.02)
            counter.join(5)
        assert len(rates) == 3 and all(n >= 1 for n in rates), rates
        assert answered >= 3
        assert watcher.last_status["state"] == "running", watcher.last_status
        # It asked for ~6 MB of replies it never read: it is disconnected, never served whole.
        deadline = time.monotonic() + 30.0
        while "(slow) too slow: disconnected" not in d.log() and time.monotonic() < deadline:
            asker.request("status")
            time.sleep(0.1)
        assert "(slow) too slow: disconnected" in d.log()
        assert not keeper.errors
        st = check_timing(asker.request("status"))
        assert st["state"] == "running" and st["fault"] is None, st
        slow.close()
        sender.join(5)
    finally:
        keeper.stop()
    assert not keeper.errors
    kiosk.request("stop")
    assert d.alive
