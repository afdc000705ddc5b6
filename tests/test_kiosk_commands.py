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
