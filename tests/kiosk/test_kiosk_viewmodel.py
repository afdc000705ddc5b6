"""View-model tests: no window, a fake link, the test plays the UI thread and its clock."""

from __future__ import annotations

import os

import pytest
from fakes import HELLO, PROGRAMS, RUNNING, SUMMARY, FakeLink, status

from kiosk import strings as S
from kiosk.viewmodel import ViewModel, contact_band, mmss


class Ticks:
    """A schedule_interval that records callbacks instead of using Kivy's clock."""

    def __init__(self):
        self.calls = {}

    def __call__(self, fn, interval_s):
        self.calls[fn.__name__] = (fn, interval_s)


@pytest.fixture
def vm():
    link = FakeLink()
    ticks = Ticks()
    v = ViewModel(link, schedule_interval=ticks, now=lambda: 1_800_000_000.0)
    v.ticks = ticks
    return v


def connect(vm, screening=None, passed=True):
    vm.on_link_connected(HELLO)
    vm.link.answer("programs", PROGRAMS)
    vm.link.answer(
        "screening_status",
        screening
        if screening is not None
        else ({"passed": True, "t": "2026-12-01T10:00:00Z", "answers": {}} if passed else None),
    )
    vm.link.answer(
        "totals", {"count": 0, "streak_days": 0, "today_active_s": 0.0, "daily_max_s": 1800.0}
    )
    vm.link.answer("history", [])
    vm.on_link_message({"event": "status", "data": status()})


def test_startup_until_connected_then_home(vm):
    assert vm.screen == "startup"
    vm.on_link_disconnected("connection refused")
    assert vm.screen == "startup" and vm.service_missing and not vm.service_lost
    connect(vm)
    assert vm.screen == "home"
    assert vm.selected_program == "full-face-lift"
    assert vm.sim and vm.lease_ms == 300.0


def test_first_use_until_screening_passed(vm):
    vm.on_link_connected(HELLO)
    vm.link.answer("screening_status", None)
    vm.on_link_message({"event": "status", "data": status()})
    assert vm.screen == "first_use"
    answers = {k: False for k, _ in S.SCREENING_QUESTIONS}
    vm.submit_screening(answers)
    assert vm.link.args[-1] == {"answers": answers}
    vm.link.answer("screening", {"passed": True, "t": "2026-12-01T10:00:00Z"})
    assert vm.screen == "first_use"  # not until the daemon's record says so
    vm.link.answer("screening_status", {"passed": True, "t": "x", "answers": answers})
    assert vm.screen == "home"


def test_screening_yes_goes_no_further(vm):
    vm.on_link_connected(HELLO)
    vm.link.answer("screening_status", None)
    vm.on_link_message({"event": "status", "data": status()})
    answers = {k: False for k, _ in S.SCREENING_QUESTIONS}
    answers["pregnancy"] = True
    vm.submit_screening(answers)
    assert vm.screening_stop == ["pregnancy"]
    vm.link.answer("screening", {"passed": False, "t": "x"})
    vm.link.answer("screening_status", {"passed": False, "t": "x", "answers": answers})
    assert vm.screen == "first_use"
    vm.go("home")
    assert vm.screen == "first_use"
    # A mistaken tap: the questions again; only new answers, all no, on record open home.
    vm.answer_screening_again()
    assert vm.screening_stop == [] and vm.screen == "first_use"
    answers["pregnancy"] = False
    vm.submit_screening(answers)
    assert vm.link.args[-1] == {"answers": answers}
    vm.link.answer("screening", {"passed": True, "t": "y"})
    vm.link.answer("screening_status", {"passed": True, "t": "y", "answers": answers})
    assert vm.screen == "home"


def test_old_daemon_without_screening_is_handled(vm):
    vm.on_link_connected(HELLO)
    assert vm.link.fail("screening_status", "UNKNOWN_COMMAND", "unknown command") == 1
    vm.on_link_message({"event": "status", "data": status()})
    assert not vm.screening_supported and vm.screen == "first_use"
    vm.submit_screening({k: False for k, _ in S.SCREENING_QUESTIONS})
    assert "screening" not in vm.link.cmds()  # nothing to send it to
    assert vm.screen == "home"


def test_sim_unknown_command_is_a_message_not_a_crash(vm):
    connect(vm)
    vm.link.fail("sim", "UNKNOWN_COMMAND", "unknown command 'sim'")
    assert "sim" in vm.sim_message
    vm.sim_action("inject", fault="lift_off")
    vm.link.fail("sim", "NOT_SIM", "only with --sim")
    assert vm.sim_message.startswith("NOT_SIM")


def test_start_sends_program_id_only_and_renews_lease_on_the_ui_clock(vm):
    connect(vm)
    fn, interval = vm.ticks.calls["lease_tick"]
    assert interval == pytest.approx(0.1)
    fn(0.1)
    assert "lease" not in vm.link.cmds()  # no lease before a start was accepted
    vm.select_program("demo")
    vm.start_treatment()
    assert vm.link.args[-1] == {"program": "demo"}  # an intent: no current, no level in uA
    vm.link.answer("start", {"state": "contact_check"})
    # The daemon armed the lease when it accepted the start: renewed at once, then every tick.
    assert vm.link.cmds()[-1] == "lease"
    for _ in range(3):
        fn(0.1)
    assert vm.link.cmds().count("lease") == 4
    vm.link.answer("lease", {"lease_ms": 300.0, "held": True})
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    assert vm.screen == "treatment"
    vm.on_link_message({"event": "treatment_finished", "data": SUMMARY})
    fn(0.1)
    assert vm.link.cmds().count("lease") == 4  # the lease ended with the treatment


def test_start_refused_shows_why_and_holds_no_lease(vm):
    connect(vm)
    vm.start_treatment()
    vm.link.fail("start", "REFUSED", "a charger is connected")
    assert "charger" in vm.notice
    vm.ticks.calls["lease_tick"][0](0.1)
    assert "lease" not in vm.link.cmds()


def test_lease_not_held_any_more_stops_renewing(vm):
    connect(vm)
    vm.start_treatment()
    vm.link.answer("start", {"state": "contact_check"})  # (renews at once)
    vm.link.answer("lease", {"lease_ms": 300.0, "held": False})
    vm.lease_tick()
    assert vm.link.cmds().count("lease") == 1


def test_treatment_status_fields_and_trace(vm):
    connect(vm)
    for i in range(150):
        vm.on_link_message({"event": "status", "data": status(**{**RUNNING, "measured_ua": i})})
    assert vm.screen == "treatment"
    assert vm.level == 3 and vm.level_max == 4
    assert vm.step_left == "0:08" and vm.total_left == "0:16"
    assert len(vm.trace) == 100 and vm.trace[-1] == 149 and vm.trace[0] == 50
    assert vm.contact_band == "good" and vm.contact_word == S.CONTACT_WORDS["good"]


def test_level_buttons_send_steps(vm):
    connect(vm)
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    vm.level_up()
    vm.level_down()
    assert vm.link.cmds()[-2:] == ["level_up", "level_down"]
    vm.link.fail("level_up", "REFUSED", "level must be 1..4 in this step")
    assert "1..4" in vm.notice


def test_lift_off_shows_paused_timer_then_recontact(vm):
    """The daemon's lift-off: state contact_check with the output lifted, then (re-contact) the
    charge balance and the ramp. The treatment screen stays, with the banner; only a treatment
    that never ramped yet shows the contact-check screen."""
    connect(vm)
    vm.start_treatment()
    vm.link.answer("start", {"state": "contact_check"})
    first = {**RUNNING, "state": "contact_check", "output": "on", "level": 1}
    vm.on_link_message({"event": "status", "data": status(**first)})
    assert vm.screen == "contact"  # the first contact check
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    vm.on_link_message({"event": "contact_lost", "data": {"reason": "open load"}})
    lifted = {**RUNNING, "state": "contact_check", "output": "lifted", "contact": False}
    vm.on_link_message({"event": "status", "data": status(**lifted)})
    assert vm.lifted and vm.contact_band == "none" and vm.screen == "treatment"
    vm.on_link_message({"event": "contact_restored", "data": {"lifted_s": 1.0}})
    for output in ("balance", "ramp_up"):
        st = {**RUNNING, "state": "contact_check" if output == "balance" else "ramp_up"}
        vm.on_link_message({"event": "status", "data": status(**{**st, "output": output})})
        assert not vm.lifted and vm.recontact and vm.screen == "treatment", output
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    assert not vm.recontact  # the output is on again
    vm.on_link_message({"event": "treatment_finished", "data": SUMMARY})
    vm.on_link_message({"event": "status", "data": status(state="finished", last_summary=SUMMARY)})
    vm.dismiss_summary()
    vm.start_treatment()  # the next treatment's first contact check is the contact screen again
    vm.link.answer("start", {"state": "contact_check"})
    vm.on_link_message({"event": "status", "data": status(**first)})
    assert vm.screen == "contact"


def test_cue_words_shown_for_a_few_seconds(vm):
    t = [1_800_000_000.0]
    vm.now = lambda: t[0]
    connect(vm)
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    vm.on_link_message({"event": "cue", "data": {"kind": "relocate", "zone": "cheeks"}})
    assert vm.cue_text == S.MOVE_ON and vm.cue_count == 1
    t[0] += 2.0
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    assert vm.cue_text == S.MOVE_ON
    t[0] += 1.5
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    assert vm.cue_text == ""
    vm.on_link_message({"event": "cue", "data": {"kind": "next_zone", "zone": "forehead"}})
    assert vm.cue_text == S.NEXT_ZONE.format(zone="Forehead")


def test_pause_resume_toggles_on_state(vm):
    connect(vm)
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    vm.pause_resume()
    vm.on_link_message(
        {"event": "status", "data": status(**{**RUNNING, "state": "paused", "output": "off"})}
    )
    vm.pause_resume()
    assert vm.link.cmds()[-2:] == ["pause", "resume"]


def test_summary_then_home(vm):
    connect(vm)
    vm.on_link_message(
        {"event": "treatment_started", "data": {"program": "demo", "treatment_id": 3}}
    )
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    vm.on_link_message({"event": "treatment_finished", "data": SUMMARY})
    vm.on_link_message({"event": "status", "data": status(state="finished", last_summary=SUMMARY)})
    assert vm.screen == "summary" and vm.summary["charge_uc"] == 1234.5
    vm.dismiss_summary()
    assert vm.screen == "home"
    vm.on_link_message({"event": "status", "data": status(state="finished", last_summary=SUMMARY)})
    assert vm.screen == "home"


def test_fault_needs_acknowledge_then_self_test(vm):
    connect(vm)
    fault = {
        "code": "ESTOP",
        "message": "The stop button was pressed.",
        "action": "Release the stop button, then acknowledge.",
        "detail": "x",
    }
    vm.on_link_message({"event": "fault", "data": fault})
    vm.on_link_message(
        {"event": "status", "data": status(state="fault", output="tripped", fault=fault)}
    )
    assert vm.screen == "fault" and vm.fault["action"].startswith("Release")
    vm.acknowledge()
    vm.link.fail("acknowledge", "REFUSED", "release the e-stop first")
    assert "release the e-stop" in vm.ack_message
    assert "self_test" not in vm.link.cmds()
    vm.acknowledge()
    vm.link.answer("acknowledge", {"state": "idle"})
    assert vm.link.cmds()[-1] == "self_test"


def test_service_lost_overlay_and_latched_fault_after_restart(vm):
    connect(vm)
    vm.start_treatment()
    vm.link.answer("start", {"state": "contact_check"})
    leases = vm.link.cmds().count("lease")
    vm.on_link_disconnected("the daemon closed the connection")
    assert vm.service_lost and not vm.holding_lease
    vm.lease_tick()
    assert vm.link.cmds().count("lease") == leases  # nothing renewed over a lost connection
    vm.on_link_connected(HELLO)
    assert not vm.service_lost
    vm.on_link_message(
        {
            "event": "status",
            "data": status(
                state="fault",
                output="tripped",
                fault={"code": "LEASE_EXPIRED", "message": "m", "action": "a"},
            ),
        }
    )
    assert vm.screen == "fault"


def test_blanking_never_during_treatment_and_wake(vm):
    connect(vm)
    vm.blank_after_s = 10
    vm.on_link_message({"event": "status", "data": status(**RUNNING)})
    for _ in range(20):
        vm.idle_tick(1.0)
    assert not vm.blanked
    vm.on_link_message({"event": "status", "data": status()})
    for _ in range(9):
        vm.idle_tick(1.0)
    assert not vm.blanked
    vm.touched()
    for _ in range(10):
        vm.idle_tick(1.0)
    assert vm.blanked
    vm.wake()
    assert not vm.blanked and vm.screen == "home"


def test_home_texts(vm):
    connect(vm)
    vm.totals = {"streak_days": 4, "today_active_s": 600.0, "daily_max_s": 1800.0}
    vm.history = [
        {"program_name": "Demo", "started_at": 1_800_000_000.0 - 3600},
        {"program_name": "Demo", "started_at": 1_800_000_000.0 - 30 * 86400},
    ]
    assert vm.streak_text() == S.STREAK.format(n=4)
    assert vm.today_text() == S.TODAY_LEFT.format(min=20)
    assert vm.week_count() == 1
    assert vm.last_text().startswith("Last: Demo")
    vm.totals = {"streak_days": 1, "today_active_s": 1800.0, "daily_max_s": 1800.0}
    assert vm.today_text() == S.TODAY_USED_UP and vm.streak_text() == S.STREAK_ONE


def test_export_csv_writes_file(vm, tmp_path):
    connect(vm)
    out = tmp_path / "h.csv"
    vm.export_csv(lambda: str(out))
    vm.link.answer("export_csv", {"csv": "id\r\n1\r\n"})
    assert out.read_bytes() == b"id\r\n1\r\n" and str(out) in vm.notice
    vm.export_csv(lambda: str(tmp_path / "nodir" / "x.csv"))
    vm.link.answer("export_csv", {"csv": "id\r\n"})
    assert vm.notice.startswith("Could not save")


def test_service_pin(vm):
    connect(vm)
    assert not vm.unlock_service("1234") and vm.notice == S.PIN_WRONG
    assert vm.unlock_service("0000") and vm.service_unlocked
    vm.go("home")
    assert not vm.service_unlocked


def test_the_service_area_shows_the_steps_the_limits_by_file_and_the_versions(vm):
    from kiosk.screens.settings import service_text
    from kiosk.shots_data import SERVICE_INFO

    connect(vm)
    assert not vm.link.pending("service_info")  # nothing asked before the PIN
    vm.unlock_service("0000")
    assert vm.link.answer("service_info", SERVICE_INFO) == 1
    assert vm.link.pending("events")
    text = service_text(vm.service_info, [])
    assert S.SVC_SELF_TEST.format(verdict=S.SVC_PASSED) in text
    assert "calibration:  plus_ua=208.893" in text and "relay:  before_ua=199.814" in text
    site = S.SVC_LIMITS.format(file="/etc/microcurrent-kiosk/site.yaml")
    assert site in text and text.index(site) < text.index("limits.lease_ms = 250")
    assert "hw 0.1.0" in text and "SCHED_FIFO 20" in text
    failed = {**SERVICE_INFO, "post": {"passed": False, "failed_step": "relay", "reason": "leak"}}
    assert S.SVC_FAILED.format(step="relay", reason="leak") in service_text(failed, [])
    # A self-test that ends while the area is open is asked for again; a locked area asks nothing.
    vm.post_passed = None
    vm.post_passed = False
    assert vm.link.answer("service_info", failed) == 1
    vm.go("home")
    vm.post_passed = None
    vm.post_passed = True
    assert not vm.link.pending("service_info")
    # An older daemon: said so, the events still shown.
    vm.go("settings")
    vm.unlock_service("0000")
    vm.link.fail("service_info", "UNKNOWN_COMMAND")
    assert vm.service_info == {"unavailable": True}
    assert "not available" in service_text(vm.service_info, [])
    # Odd shapes from the daemon are skipped, never raised on; its text is not markup.
    for odd in (
        {"post": "x", "limits": [1, None, {"key": "[b]k", "value": "[/b]"}], "versions": 3},
        {"post": {"passed": True, "steps": ["x", {"step": "[i]z", "a": 1}]}, "realtime": []},
        [],
        None,
    ):
        text = service_text(odd, [{"ts": "soon", "kind": "[x]"}, None, 5])
        assert isinstance(text, str) and "[b]k" not in text and "[i]z" not in text
    vm.unlock_service("0000")
    vm.link.answer("service_info", ["not", "a", "dict"])
    assert vm.service_info == {"unavailable": True}


def test_helpers():
    assert mmss(None) == "--:--" and mmss(0) == "0:00" and mmss(61.2) == "1:02"
    assert contact_band(False, 100) == "none" and contact_band(True, 90) == "good"
    assert contact_band(True, 60) == "fair" and contact_band(True, 10) == "dry"


def test_lease_kept_through_self_test_and_ready_before_output(vm):
    """A start that runs the self-test first: self_test -> ready -> contact_check. The lease
    must be renewed all along (it was dropped at "ready": LEASE_EXPIRED in the bench)."""
    connect(vm)
    vm.start_treatment()
    vm.link.answer("start", {"state": "self_test"})
    for state in ("self_test", "ready", "contact_check"):
        vm.on_link_message({"event": "status", "data": status(state=state)})
        n = vm.link.cmds().count("lease")
        vm.lease_tick()
        assert vm.link.cmds().count("lease") == n + 1, state
    vm.on_link_message({"event": "start_refused", "data": {"reason": "charger"}})
    n = vm.link.cmds().count("lease")
    vm.lease_tick()
    assert vm.link.cmds().count("lease") == n


def test_sound_asks_the_daemon_and_an_older_daemon_hides_the_toggle(vm):
    connect(vm)
    vm.set_sound(False)
    assert vm.link.args[-1] == {"on": False}
    vm.link.answer("set_sound", {"sound": False})
    assert vm.sound is False and vm.sound_supported
    vm.set_sound(True)
    vm.link.fail("set_sound", "UNKNOWN_COMMAND", "unknown command 'set_sound'")
    assert not vm.sound_supported and "sound" in vm.notice
    assert vm.sound is False  # unchanged: the daemon did not take it


def test_brightness_on_a_panel_with_a_backlight(tmp_path):
    from kiosk.backlight import MIN_PCT, Backlight

    assert Backlight.find(tmp_path / "none") is None  # a desktop: no row, nothing written
    d = tmp_path / "rpi_backlight"
    d.mkdir()
    (d / "max_brightness").write_text("255\n")
    (d / "brightness").write_text("255\n")
    vm = ViewModel(FakeLink(), schedule_interval=Ticks(), backlight=Backlight.find(tmp_path))
    assert vm.brightness_pct == 100
    vm.set_brightness(50)
    assert (d / "brightness").read_text() == "128" and vm.brightness_pct == 50
    vm.set_brightness(-20)  # never fully dark by a setting
    assert vm.brightness_pct == MIN_PCT and (d / "brightness").read_text() == "26"
    assert vm.link.sent == []  # the backlight is the kiosk's: no daemon command
    (d / "brightness").chmod(0o444)
    if os.access(d / "brightness", os.W_OK):  # root ignores the mode: make the write fail
        (d / "brightness").unlink()
        (d / "brightness").mkdir()
    vm.set_brightness(70)
    assert "brightness" in vm.notice and vm.brightness_pct == MIN_PCT


def test_fault_words_the_daemons_except_a_closed_screen_and_the_history_hint():
    ours = {"message": "m", "action": "a"}
    assert S.fault_words({"code": "ESTOP", **ours}) == ("m", "a")
    hung = {"code": "LEASE_EXPIRED", "detail": "lease 300 ms not renewed", **ours}
    assert S.fault_words(hung) == ("m", "a")  # the daemon's "the screen stopped responding"
    closed = {"code": "LEASE_EXPIRED", "detail": "controller kiosk disconnected", **ours}
    assert S.fault_words(closed) == (S.FAULT_SCREEN_CLOSED, "a")
    assert S.fault_words({"code": "UNACKNOWLEDGED", **ours}) == ("m", S.FAULT_UNACK_ACTION)
    assert S.fault_words({}) == (S.FAULT_UNKNOWN, S.FAULT_ACTION_DEFAULT)
