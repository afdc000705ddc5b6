"""Render every screen headless and save a PNG of each: ``python -m kiosk.shots OUTDIR``.

Used by the widget test (tests/kiosk/test_kiosk_shots.py) in one subprocess, because Kivy keeps
one Window per process. Every screen is filled from a scripted view-model (no daemon); after each
shot the sizes of its touch targets and texts are measured and written to OUTDIR/report.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")

MIN_TARGET_PX = 52
MIN_BIG_PX = 80
MIN_TEXT_PX = 20

# The scripted data (also used by the scripted bench and the tests' fakes).
from kiosk.shots_data import (  # noqa: E402
    FAULT,
    HELLO,
    HISTORY,
    NOW_S,
    PROGRAMS,
    RUN,
    SERVICE_INFO,
    SUMMARY,
    NullLink,
    status,
)


def find(root, text: str):
    """The visible button with this text on the current screen."""
    from kivy.uix.button import Button

    for w in root.walk(restrict=True):
        if isinstance(w, Button) and w.text == text and w.opacity > 0 and w.width > 1:
            return w
    return None


def prepare_touch() -> None:
    """Import what :func:`tap` needs now, before anything is measured: kivy.tests.common takes
    180-400 ms to import here, which at a first tap during a treatment held the UI thread past
    the 300 ms lease (LEASE_EXPIRED in python -m kiosk.bench, 3.4 s into the treatment)."""
    import kivy.tests.common  # noqa: F401


def tap(widget, hold_s: float = 0.0):
    """A real touch through the window at the widget's centre (down, then up after hold_s).
    Call :func:`prepare_touch` at start-up: the first import is slow."""
    from kivy.clock import Clock
    from kivy.tests.common import UnitTestTouch

    x, y = widget.to_window(*widget.center)
    t = UnitTestTouch(x, y)
    t.touch_down()
    if hold_s:
        Clock.schedule_once(lambda _dt: t.touch_up(), hold_s)
    else:
        t.touch_up()


def interact(name: str, vm, root, checks: dict) -> float:
    """Touch checks after some shots; returns how long to wait before the next shot (s)."""
    from kiosk import strings as S

    link = vm.link
    if name == "blank":
        start = find(root, S.START)  # under the black layer
        before = len(link.sent)
        tap(start)
        checks["blank_tap_woke"] = not vm.blanked
        checks["blank_tap_did_nothing_else"] = vm.nav == "home" and len(link.sent) == before
    elif name == "history":
        rows = root.ids.sm.get_screen("history").ids.rows
        before = list(rows.children)
        vm.history = [dict(h) for h in HISTORY]  # reloaded while shown: the same rows, updated
        checks["history_rows_reused"] = len(before) == len(HISTORY) and before == list(
            rows.children
        )
    elif name == "fault":
        hold = find(root, S.FAULT_HOLD)
        tap(hold)  # a short tap is not a deliberate press
        checks["fault_short_tap_acknowledged"] = "acknowledge" in link.sent
        tap(hold, hold_s=2.0)  # held longer than ACK_HOLD_S: acknowledge
        return 2.3
    elif name == "treatment":
        rows = root.ids.sm.get_screen("history").ids.rows
        before = list(rows.children)
        vm.history = HISTORY[:2]  # a history load during a treatment
        checks["history_untouched_behind_treatment"] = list(rows.children) == before
        for text, cmd in (("+", "level_up"), ("−", "level_down"), (S.STOP, "stop")):
            tap(find(root, text))
            checks[f"tap_{cmd}"] = link.sent[-1] == cmd
    return 0.0


def after_wait(name: str, vm, checks: dict) -> None:
    if name == "fault":
        checks["fault_hold_acknowledged"] = "acknowledge" in vm.link.sent


def scenes(vm):
    """(name, window size, setup) for every shot, in order (``vm`` None: names and sizes)."""

    def msg(**kw):
        vm.on_link_message({"event": "status", "data": status(**kw)})

    def base():
        vm.on_link_connected(HELLO)
        vm.screening_known, vm.screening = (
            True,
            {"passed": True, "t": "2026-11-30T09:12:00Z", "answers": {}},
        )
        vm.screening_stop = []
        vm.programs, vm.selected_program = PROGRAMS, "full-face-lift"
        vm.totals = {
            "count": 23,
            "active_s": 11520.0,
            "streak_days": 5,
            "today_active_s": 300.0,
            "daily_max_s": 1800.0,
        }
        vm.history = HISTORY
        vm.notice, vm.lifted, vm.recontact, vm.summary_dismissed = "", False, False, True
        vm.nav = "home"

    def startup():
        vm.ever_connected = False
        vm.state = ""
        vm._route()

    def startup_missing():
        vm.on_link_disconnected("[Errno 2] No such file or directory")

    def self_test():
        vm.on_link_connected(HELLO)
        base()
        msg(state="self_test", output="post")

    def first_use():
        base()
        vm.screening = None
        msg()

    def first_use_no():
        base()
        vm.screening = None
        vm.screening_stop = ["pregnancy"]
        msg()

    def home():
        base()
        msg()

    def prep():
        base()
        vm.nav = "prep"
        msg()

    def contact():
        base()
        msg(state="contact_check", output="ramp_up", contact=True, contact_quality_pct=38.0)

    def treatment():
        base()
        vm.trace = [120 + 40 * ((i % 20) / 20) for i in range(100)]
        msg(**RUN)

    def treatment_lifted():
        base()
        msg(**RUN)  # the output ramped: a contact check after this is a lift-off
        vm.on_link_message({"event": "contact_lost", "data": {"reason": "open load"}})
        lifted = {"state": "contact_check", "output": "lifted", "contact": False}
        msg(**{**RUN, **lifted, "measured_ua": 2.0})

    def summary():
        base()
        vm.summary_dismissed = False
        vm.summary = SUMMARY
        msg(state="finished", last_summary=SUMMARY)

    def fault():
        base()
        vm.on_link_message({"event": "fault", "data": FAULT})
        msg(state="fault", output="tripped", fault=FAULT)

    def history():
        base()
        vm.detail = {
            "id": 8,
            "program_name": "Full-face lift",
            "zones": [
                {"zone": z, "active_s": 120, "mean_current_ua": 118.0}
                for z in ("forehead", "brows", "cheeks", "jawline", "neck")
            ],
        }
        vm.nav = "history"
        msg()

    def settings():
        base()
        vm.nav = "settings"
        vm.service_unlocked = False
        vm.brightness_pct = 80  # as with the Pi's panel (no backlight here: the row is shown)
        msg()

    def settings_service():
        base()
        vm.nav = "settings"
        vm.service_unlocked = True
        vm.service_info = dict(SERVICE_INFO)
        vm.events_log = [
            {"ts": NOW_S - 60, "kind": "post", "code": "PASS"},
            {"ts": NOW_S - 30, "kind": "fault", "code": "ESTOP"},
        ]
        msg()

    def service_lost():
        base()
        msg(**RUN)
        vm.on_link_disconnected("the daemon closed the connection")

    def blank():
        vm.on_link_connected(HELLO)
        base()
        msg()
        vm.blanked = True

    def sim_panel():
        vm.blanked = False
        base()
        vm.sim_state = {
            "faults": ["lift_off"],
            "skin": "dry",
            "skins": ["normal", "dry", "damp", "sweaty"],
        }
        msg(**RUN)

    land, port, wide = (800, 480), (720, 1280), (1100, 480)
    return [
        ("startup_connecting", land, startup),
        ("startup_missing", land, startup_missing),
        ("startup_self_test", land, self_test),
        ("first_use", land, first_use),
        ("first_use_stop", land, first_use_no),
        ("home", land, home),
        ("prep", land, prep),
        ("contact", land, contact),
        ("treatment", land, treatment),
        ("treatment_lifted", land, treatment_lifted),
        ("summary", land, summary),
        ("fault", land, fault),
        ("history", land, history),
        ("settings", land, settings),
        ("settings_service", land, settings_service),
        ("service_lost", land, service_lost),
        ("blank", land, blank),
        ("treatment_portrait", port, treatment),
        ("home_portrait", port, home),
        ("sim_panel", wide, sim_panel),
    ]


def measure(root) -> dict:
    """The smallest touch target and text on screen, and STOP / level -/+ sizes."""
    from kivy.uix.button import Button
    from kivy.uix.label import Label

    small_btn, small_txt, big = [], [], {}
    for w in root.walk(restrict=True):
        if not w.get_root_window() or w.opacity == 0 or w.width <= 1 or w.height <= 1:
            continue
        parent = w.parent
        hidden = False
        while parent is not None and parent is not root and parent.parent is not parent:
            if getattr(parent, "opacity", 1) == 0 or getattr(parent, "width", 2) <= 1:
                hidden = True
                break
            parent = parent.parent
        if hidden:
            continue
        if isinstance(w, Button):
            if min(w.width, w.height) < MIN_TARGET_PX:
                small_btn.append((w.text, w.width, w.height))
            if w.text in ("STOP", "−", "+") and min(w.size) >= 1:
                big.setdefault(w.text, []).append(min(w.width, w.height))
        if isinstance(w, Label) and w.text and w.font_size < MIN_TEXT_PX:
            small_txt.append((w.text[:30], w.font_size))
    return {"small_buttons": small_btn, "small_text": small_txt, "big": big}


def main(outdir: str, size: str | None = None) -> int:
    """Without ``size``: one child process per window size (Kivy's window cannot be resized
    reliably offscreen), then one merged report.json. With ``size`` (WxH): that group only."""
    os.makedirs(outdir, exist_ok=True)
    if size is None:
        import subprocess

        sizes = []
        for _name, sz, _f in scenes(None):
            if sz not in sizes:
                sizes.append(sz)
        report: dict = {}
        for w, h in sizes:
            part = os.path.join(outdir, f"report-{w}x{h}.json")
            subprocess.run([sys.executable, "-m", "kiosk.shots", outdir, f"{w}x{h}"], check=True)
            with open(part) as f:
                part_report = json.load(f)
            report.setdefault("checks", {}).update(part_report.pop("checks", {}))
            report.update(part_report)
        with open(os.path.join(outdir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        return 0
    w, h = (int(v) for v in size.split("x"))
    from kiosk.display import configure_window

    configure_window(w, h)
    from kivy.clock import Clock
    from kivy.core.window import Window

    from kiosk.app import KioskApp
    from kiosk.viewmodel import ViewModel

    vm = ViewModel(NullLink(), now=lambda: NOW_S)
    app = KioskApp(vm, sim_panel=True, socket_path="/run/microcurrent/hw.sock")
    todo = [s for s in scenes(vm) if tuple(s[1]) == (w, h)]
    report: dict = {}
    checks: dict = {}
    state = {"i": 0, "frames": 0, "panel": None, "wait_until": 0.0, "waiting": None}

    def step(_dt):
        root = app.root
        if state["panel"] is None:
            state["panel"] = root.children[0]  # the sim panel (added last)
            root.remove_widget(state["panel"])
        if state["waiting"] is not None:
            if time.monotonic() < state["wait_until"]:
                return True
            after_wait(state["waiting"], vm, checks)
            state["waiting"] = None
        if state["i"] >= len(todo):
            report["checks"] = checks
            with open(os.path.join(outdir, f"report-{w}x{h}.json"), "w") as f:
                json.dump(report, f, indent=1)
            app.stop()
            return False
        name, _size, setup = todo[state["i"]]
        if state["frames"] == 0:
            panel = state["panel"]
            if name == "sim_panel" and panel.parent is None:
                root.add_widget(panel)
            elif name != "sim_panel" and panel.parent is not None:
                root.remove_widget(panel)
            setup()
        state["frames"] += 1
        if state["frames"] < 4:  # layout settles over a few frames
            return True
        final = os.path.join(outdir, name + ".png")
        path = Window.screenshot(name=final)
        if path and path != final:
            os.replace(path, final)
        report[name] = {"size": list(Window.size), "screen": vm.screen, **measure(root)}
        if (w, h) == (800, 480):
            wait_s = interact(name, vm, root, checks)
            if wait_s:
                state.update(waiting=name, wait_until=time.monotonic() + wait_s)
        state["i"] += 1
        state["frames"] = 0
        return True

    Clock.schedule_interval(step, 0)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "kiosk-shots", *sys.argv[2:3]))
