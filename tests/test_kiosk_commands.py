"""The daemon commands the kiosk needs beyond the treatment: the first-use contraindication check
(kept with the history) and the desktop simulation panel (only with --sim). Tier 2: the real
daemon over its socket on the simulated board."""

from __future__ import annotations

import sqlite3

import pytest
from daemon_helpers import DaemonFactory, expect_ready, renew_until, start_treatment

from hw.hal.sim.board import FAULTS, SKINS
from hw.service.client import DaemonError
from hw.service.protocol import SCREENING_QUESTIONS

pytestmark = pytest.mark.slow

NO = {q: False for q in SCREENING_QUESTIONS}


def test_screening_is_recorded_with_its_time_and_survives_a_restart(tmp_path):
    with DaemonFactory(tmp_path) as daemons:
        d = daemons.start()
        expect_ready(d)
        c = d.client("kiosk")
        assert c.request("screening_status") == {"on_record": False}
        yes = {**NO, "pregnancy": True}
        r = c.request("screening", answers=yes)
        assert r["passed"] is False and r["t"].endswith("+00:00")
        r = c.request("screening", answers=NO)
        assert r["passed"] is True
        st = c.request("screening_status")
        assert st["passed"] is True and st["answers"] == NO
        c.close()
        d.terminate()
        rows = sqlite3.connect(d.db_path).execute("SELECT passed FROM screenings").fetchall()
        assert rows == [(0,), (1,)]  # both kept, in order
        d2 = daemons.start()  # the same state directory: the record is still there
        assert d2.db_path == d.db_path
        expect_ready(d2)
        c2 = d2.client("kiosk")
        assert c2.request("screening_status")["passed"] is True


def test_a_yes_on_record_refuses_every_start_in_the_daemon_even_after_a_restart(tmp_path):
    # The kiosk goes no further after a yes; the daemon does not rely on it: any client's start
    # is refused until a check with every answer no is on record.
    with DaemonFactory(tmp_path) as daemons:
        d = daemons.start()
        expect_ready(d)
        c = d.client("kiosk")
        c.request("screening", answers={**NO, "implant": True})
        for client in (c, d.client("service-tool")):
            with pytest.raises(DaemonError) as e:
                client.request("start", program="demo", level=2)
            assert e.value.code == "REFUSED" and "answered yes (implant)" in str(e.value)
        st = c.request("status")
        assert st["state"] in ("idle", "ready") and st["output"] == "off"
        c.close()
        d.terminate()
        d2 = daemons.start()
        expect_ready(d2)
        c2 = d2.client("kiosk")
        with pytest.raises(DaemonError, match="answered yes"):
            c2.request("start", program="demo", level=2)
        c2.request("screening", answers=NO)
        start_treatment(c2, "demo")  # a later check with none: treatments may start again
        assert c2.request("status")["state"] == "running"
        # A yes recorded by any client mid-treatment ends it (a stop's ramp-down) at once.
        d2.client("other").request("screening", answers={**NO, "epilepsy": True})
        st = renew_until(c2, lambda s: s["state"] in ("finished", "ready"), 5.0)
        assert st["output"] == "off" and st["fault"] is None
        with pytest.raises(DaemonError, match=r"answered yes \(epilepsy\)"):
            c2.request("start", program="demo", level=2)


@pytest.mark.parametrize(
    "answers, code",
    [
        ({**NO, "implant": "no"}, "BAD_ARGUMENT"),  # not a boolean
        ({k: v for k, v in NO.items() if k != "under_18"}, "BAD_ARGUMENT"),  # one unanswered
        ({**NO, "eyes": False}, "BAD_ARGUMENT"),  # an unknown question
        ([False] * 6, "BAD_ARGUMENT"),
    ],
)
def test_bad_screening_answers_are_refused_and_change_nothing(tmp_path, answers, code):
    with DaemonFactory(tmp_path) as daemons:
        d = daemons.start()
        expect_ready(d)
        c = d.client("kiosk")
        with pytest.raises(DaemonError) as e:
            c.request("screening", answers=answers)
        assert e.value.code == code
        assert c.request("screening_status") == {"on_record": False}


def test_the_sim_panel_lifts_the_electrodes_and_changes_the_skin(tmp_path):
    with DaemonFactory(tmp_path) as daemons:
        d = daemons.start()
        expect_ready(d)
        c = d.client("kiosk")
        st = c.request("sim", action="state")
        assert st["faults"] == [] and set(st["known_faults"]) == set(FAULTS)
        assert set(st["skins"]) == set(SKINS)
        start_treatment(c, "demo")
        assert c.request("sim", action="inject", fault="lift_off")["faults"] == ["lift_off"]
        st = renew_until(c, lambda s: s["output"] == "lifted", 2.0)
        assert st["output"] == "lifted" and st["fault"] is None
        assert c.request("sim", action="clear", fault="lift_off")["faults"] == []
        assert c.request("sim", action="skin", skin="damp")["skin"] == "damp"
        with pytest.raises(DaemonError) as e:
            c.request("sim", action="inject", fault="meteor")
        assert e.value.code == "OUT_OF_RANGE"
        with pytest.raises(DaemonError) as e:
            c.request("sim", action="skin", skin="oily")
        assert e.value.code == "OUT_OF_RANGE"
        c.request("stop")


# ------------------------------------------------- the settings screen's service area and sound
def test_service_info_gives_the_self_test_steps_the_limits_with_their_files_and_versions(
    tmp_path,
):
    site = tmp_path / "site.yaml"
    site.write_text("limits:\n  lease_ms: 250\n")  # a site file may only make it safer
    with DaemonFactory(tmp_path, config=site) as daemons:
        d = daemons.start()
        expect_ready(d)
        c = d.client("kiosk")
        info = c.request("service_info")
        post = info["post"]
        assert post["passed"] is True and info["post_valid"] is True
        steps = [s["step"] for s in post["steps"]]
        assert steps[:2] == ["reference", "zero"] and "relay" in steps and len(steps) >= 8
        ref = post["steps"][0]
        assert isinstance(ref["rail_v"], float) and ref["rail_v"] > 0  # the measured figure
        limits = {row["key"]: row for row in info["limits"]}
        assert limits["limits.lease_ms"]["value"] == 250
        assert limits["limits.lease_ms"]["file"] == str(site)  # set by the site file
        assert limits["limits.max_current_ua"]["file"].endswith("default.yaml")
        assert {"limits.daily_max_s", "loop.rate_hz", "ui.blank_after_s"} <= set(limits)
        v = info["versions"]
        assert v["protocol"] == 1 and v["python"].count(".") == 2 and v["hw"]
        assert info["realtime"]["process"] == "separate" and info["realtime"]["pid"] > 0
        assert info["sim"] is True
        # Read-only: asking changed nothing, and a failed self-test is shown with its step.
        c.request("sim", action="inject", fault="welded_relay")
        c.request("self_test")
        st = renew_until(c, lambda s: s["state"] == "fault", 10.0, renew=False)
        assert st["fault"]["code"] == "POST_FAILED"
        failed = c.request("service_info")["post"]
        # A welded relay still conducts when the comparator cuts the stage's enable path.
        assert failed["passed"] is False and failed["failed_step"] == "latch_trip"
        assert failed["reason"] and [s["step"] for s in failed["steps"]] == steps[:4]


def test_sound_is_a_preference_the_daemon_keeps_and_refuses_bad_input(tmp_path):
    with DaemonFactory(tmp_path) as daemons:
        d = daemons.start()
        expect_ready(d)
        c = d.client("kiosk")
        assert c.request("set_sound", on=False) == {"sound": False}
        other = d.client("other")  # every client sees it in its hello
        assert other.hello["sound"] is False
        for bad in ({"on": "no"}, {"on": 0}, {}):
            with pytest.raises(DaemonError) as e:
                c.request("set_sound", **bad)
            assert e.value.code == "BAD_ARGUMENT"
        assert d.client("third").hello["sound"] is False  # unchanged by the bad requests
        assert c.request("set_sound", on=True) == {"sound": True}
