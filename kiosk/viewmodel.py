"""The kiosk's view-model: everything the screens show, as Kivy properties, and every intent.

It runs on the UI thread only (the link posts to it there). It holds no safety logic: it sends
intents (program ids, level steps, stop) and shows what the daemon reports; every limit and timer
is the daemon's. It renews the treatment lease from the UI thread's clock, so a hung UI lets the
lease expire and the daemon cuts the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kivy.event import EventDispatcher
from kivy.properties import (
    BooleanProperty,
    DictProperty,
    ListProperty,
    NumericProperty,
    ObjectProperty,
    StringProperty,
)

from kiosk import strings as S
from kiosk.vm_prefs import PrefsMixin
from kiosk.vm_records import RecordsMixin

LEASE_RENEW_S = 0.1  # docs/protocol.md: the kiosk renews every 100 ms (lease 300 ms)
TRACE_POINTS = 100  # 5 s of the ~20 Hz status stream
TREATING = ("ramp_up", "running", "paused", "ramp_down")
ACTIVE = ("contact_check", *TREATING)  # a treatment owns the screen; never blank
IDLE_STATES = ("idle", "ready", "finished")
ACK_HOLD_S = 1.5  # the fault acknowledge needs a deliberate press this long
CUE_SHOW_S = 3.0  # a relocate / next-zone cue's words stay in the banner this long
# Words for the daemon's contact quality (%): the daemon judges contact, this only words it.
CONTACT_BANDS = ((80.0, "good"), (50.0, "fair"), (0.0, "dry"))


def contact_band(contact: bool, quality_pct: float | None) -> str:
    if not contact or quality_pct is None:
        return "none"
    for lo, band in CONTACT_BANDS:
        if quality_pct >= lo:
            return band
    return "dry"


def mmss(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = max(0, int(seconds + 0.999))  # round up: "0:00" only when the time is really over
    return f"{s // 60}:{s % 60:02d}"


class ViewModel(RecordsMixin, PrefsMixin, EventDispatcher):
    """Routing, the daemon's status, the treatment's intents and the lease; home/history in
    kiosk/vm_records.py, first use/settings/service/sim in kiosk/vm_prefs.py."""

    # connection
    connected = BooleanProperty(False)
    ever_connected = BooleanProperty(False)
    service_lost = BooleanProperty(False)  # was connected, now not: the overlay
    service_missing = BooleanProperty(False)  # never connected after the first attempt failed
    sim = BooleanProperty(False)
    link_reason = StringProperty("")  # why the last connection attempt failed (service detail)
    lease_ms = NumericProperty(300.0)
    level_count = NumericProperty(10)
    # routing
    screen = StringProperty("startup")
    nav = StringProperty("home")  # the user's choice while idle
    # daemon status
    state = StringProperty("")
    output = StringProperty("off")
    program = StringProperty("")
    program_name = StringProperty("")
    zone = StringProperty("")
    motion = StringProperty("")
    step_text = StringProperty("")
    step = NumericProperty(0)
    steps = NumericProperty(0)
    step_left = StringProperty("--:--")
    total_left = StringProperty("--:--")
    level = NumericProperty(0)
    level_max = NumericProperty(0)
    measured_ua = NumericProperty(0.0)
    contact = BooleanProperty(False)
    contact_pct = NumericProperty(0.0)
    contact_band = StringProperty("none")
    contact_word = StringProperty(S.CONTACT_WORDS["none"])
    lifted = BooleanProperty(False)
    recontact = BooleanProperty(False)
    trace = ListProperty([])  # measured current (uA), oldest first
    cue_count = NumericProperty(0)  # +1 per relocate / next-zone cue: the screen pulses the zone
    cue_text = StringProperty("")  # shown in the treatment banner for CUE_SHOW_S after a cue
    # This treatment's output has ramped at least once: a contact_check after that is a lift-off
    # (the treatment screen says "contact lost, timer paused"), not the first contact check.
    ramped = BooleanProperty(False)
    post_passed = ObjectProperty(None, allownone=True)
    post_failed_step = StringProperty("")
    fault = DictProperty({})
    ack_message = StringProperty("")
    summary = DictProperty({})
    # home / history
    programs = ListProperty([])
    selected_program = StringProperty("")
    totals = DictProperty({})
    history = ListProperty([])
    detail = DictProperty({})
    events_log = ListProperty([])
    notice = StringProperty("")  # one short line (refusal, export result)
    # first use
    screening = ObjectProperty(None, allownone=True)  # the daemon's record, or None
    screening_known = BooleanProperty(False)
    screening_supported = BooleanProperty(True)
    screening_local_pass = BooleanProperty(False)  # old daemon: passed this session only
    screening_stop = ListProperty([])  # the keys answered yes
    # blanking
    blanked = BooleanProperty(False)
    blank_after_s = NumericProperty(120.0)
    # sim panel
    sim_state = DictProperty({})
    sim_message = StringProperty("")
    # service area
    service_unlocked = BooleanProperty(False)
    service_info = DictProperty({})  # the daemon's service_info (self-test steps, limits, versions)
    # preferences: the buzzer is the daemon's (``set_sound``), the backlight the kiosk's own
    sound = BooleanProperty(True)
    sound_supported = BooleanProperty(True)
    brightness_pct = NumericProperty(-1)  # -1: no dimmable backlight (desktop, HDMI)

    def __init__(
        self,
        link=None,
        *,
        schedule_interval: Callable | None = None,
        now: Callable[[], float] = time.time,
        service_pin: str = "0000",
        backlight=None,
        **kw,
    ):
        super().__init__(**kw)
        self.link = link
        self.backlight = backlight  # kiosk.backlight.Backlight, or None
        if backlight is not None:
            try:
                self.brightness_pct = backlight.get_pct()
            except (OSError, ValueError):
                self.backlight = None
        self.now = now
        self.service_pin = service_pin
        self.holding_lease = False
        self.summary_dismissed = True
        self.idle_s = 0.0
        self._lease_inflight = 0
        self._cue_until = 0.0
        if schedule_interval is None:
            from kivy.clock import Clock

            schedule_interval = Clock.schedule_interval
        schedule_interval(self.lease_tick, LEASE_RENEW_S)
        schedule_interval(self.idle_tick, 1.0)

    # ------------------------------------------------------------------ link callbacks
    def on_link_connected(self, hello: dict) -> None:
        self.connected = True
        self.ever_connected = True
        self.service_lost = False
        self.service_missing = False
        self.sim = bool(hello.get("sim"))
        self.lease_ms = float(hello.get("lease_ms", 300.0))
        self.level_count = int(hello.get("level_count", 10))
        if isinstance(hello.get("sound"), bool):
            self.sound = hello["sound"]
        self._send("programs", callback=self._got_programs)
        self._send("screening_status", callback=self._got_screening)
        self.refresh_home()
        if self.sim:
            self.sim_action("state")
        self._route()

    def on_link_disconnected(self, reason: str) -> None:
        self.connected = False
        self.holding_lease = False
        if self.ever_connected:
            self.service_lost = True
        else:
            self.service_missing = True
        self.link_reason = reason
        self._route()

    def on_link_message(self, msg: dict) -> None:
        ev, data = msg.get("event"), msg.get("data") or {}
        if ev == "status":
            self._apply_status(data)
        elif ev == "fault":
            self.fault = dict(data)
            self.holding_lease = False
        elif ev == "contact_lost":
            self.lifted = True
            self.recontact = False
        elif ev == "contact_restored":
            self.lifted = False
            self.recontact = True
        elif ev == "cue":
            self.cue_count += 1
            self._cue_until = self.now() + CUE_SHOW_S
            if data.get("kind") == "next_zone":
                self.cue_text = S.NEXT_ZONE.format(zone=self.zone_name(data.get("zone")))
            else:
                self.cue_text = S.MOVE_ON
        elif ev == "treatment_started":
            self.summary_dismissed = False
            self.ramped = False
            self.trace = []
        elif ev == "treatment_finished":
            self.summary = dict(data)
            self.holding_lease = False
            self.refresh_home()
        elif ev in ("start_refused", "limit"):
            self.notice = S.REFUSED.format(why=data.get("reason", ""))
            if ev == "start_refused":
                self.holding_lease = False
        self._route()

    def _apply_status(self, st: dict) -> None:
        prev_state = self.state
        self.state = st.get("state") or ""
        self.output = st.get("output") or "off"
        self.program = st.get("program") or ""
        self.program_name = st.get("program_name") or ""
        self.zone = st.get("zone") or ""
        self.motion = st.get("motion") or ""
        self.step_text = st.get("text") or ""
        self.step = st.get("step") or 0
        self.steps = st.get("steps") or 0
        self.step_left = mmss(st.get("step_left_s"))
        self.total_left = mmss(st.get("total_left_s"))
        self.level = st.get("level") or 0
        self.level_max = st.get("level_max") or 0
        self.measured_ua = float(st.get("measured_ua") or 0.0)
        self.contact = bool(st.get("contact"))
        self.contact_pct = float(st.get("contact_quality_pct") or 0.0)
        self.contact_band = contact_band(self.contact, st.get("contact_quality_pct"))
        self.contact_word = S.CONTACT_WORDS[self.contact_band]
        self.lifted = self.output == "lifted"
        if self.output not in ("balance", "ramp_up"):
            # The re-contact ramp: after a lift-off the loop first balances the charge, then
            # ramps back up; the banner says so until the output is on again.
            self.recontact = False
        if self.state in ("ramp_up", "running", "paused"):
            self.ramped = True
        elif self.state not in ACTIVE:
            self.ramped = False
        if self.cue_text and self.now() >= self._cue_until:
            self.cue_text = ""
        post = st.get("post") or {}
        self.post_passed = post.get("passed")
        if post.get("failed_step"):
            self.post_failed_step = str(post["failed_step"])
        self.fault = dict(st.get("fault") or {})
        if st.get("last_summary"):
            self.summary = dict(st["last_summary"])
        if self.state in ACTIVE:
            pts = self.trace[-(TRACE_POINTS - 1) :] + [self.measured_ua]
            self.trace = pts
            self.idle_s = 0.0
            self.blanked = False
        if self.state in ("finished", "fault"):
            # Not on every non-treatment state: a start that runs the self-test first passes
            # through "ready" before its output starts, and the lease must be renewed then.
            self.holding_lease = False
        if prev_state in ACTIVE and self.state == "finished":
            self.summary_dismissed = False

    def _route(self) -> None:
        st = self.state
        if not self.ever_connected or not st:
            screen = "startup"
        elif st == "fault":
            screen = "fault"
        elif st == "contact_check" and not self.ramped:
            screen = "contact"
        elif st == "contact_check":
            screen = "treatment"  # a lift-off: "contact lost, timer paused" over the treatment
        elif st in TREATING:
            screen = "treatment"
        elif st == "self_test" or (st == "idle" and self.post_passed is False):
            screen = "startup"
        elif st == "finished" and not self.summary_dismissed and self.summary:
            screen = "summary"
        elif not self.screening_ok():
            screen = "first_use"
        else:
            screen = self.nav
        self.screen = screen

    # ------------------------------------------------------------------ replies
    def _send(self, cmd: str, args: dict | None = None, callback=None, timeout_s: float = 3.0):
        if self.link is None:
            return None
        return self.link.request(cmd, args, callback=callback, timeout_s=timeout_s)

    def _refused(self, reply) -> bool:
        """True (and a notice shown) if the reply is an error."""
        if reply.ok:
            return False
        err = reply.error or {}
        code = err.get("code")
        if code == "UNKNOWN_COMMAND":
            self.notice = S.OLD_SERVICE.format(what=reply.cmd)
        elif code in ("TIMEOUT", "DISCONNECTED"):
            self.notice = S.NO_REPLY
        else:
            self.notice = S.REFUSED.format(why=err.get("message", code))
        return True

    def _got_programs(self, reply) -> None:
        if reply.ok:
            self.programs = list(reply.result.get("programs", []))
            ids = [p["id"] for p in self.programs]
            if self.selected_program not in ids and ids:
                self.selected_program = ids[0]

    # ------------------------------------------------------------------ intents
    def go(self, nav: str) -> None:
        self.notice = ""
        self.nav = nav
        if nav == "history":
            self.refresh_home()
            self._send("events", {"limit": 20}, callback=self._got_events)
        if nav != "settings":
            self.service_unlocked = False
        self._route()

    def select_program(self, program_id: str) -> None:
        self.selected_program = program_id

    def start_treatment(self) -> None:
        """The person is ready: ask the daemon to start the selected program (level 1)."""
        if not self.selected_program:
            return
        self.notice = ""
        self._send("start", {"program": self.selected_program}, callback=self._started)

    def _started(self, reply) -> None:
        if self._refused(reply):
            return
        self.holding_lease = True
        self.summary_dismissed = False
        self.ramped = False
        self.trace = []
        # The daemon armed the lease when it accepted the start, before this reply travelled
        # here: renew now rather than at the next 100 ms tick (the contact screen's first frame
        # comes next and may be a long one).
        self.lease_tick()

    def level_up(self) -> None:
        self._send("level_up", callback=self._refused)

    def level_down(self) -> None:
        self._send("level_down", callback=self._refused)

    def pause_resume(self) -> None:
        cmd = "resume" if self.state == "paused" else "pause"
        self._send(cmd, callback=self._refused)

    def stop(self) -> None:
        """STOP: anyone may stop; the daemon ramps down at once."""
        self._send("stop", callback=self._refused, timeout_s=1.0)

    def acknowledge(self) -> None:
        self.ack_message = ""
        self._send("acknowledge", callback=self._acked)

    def _acked(self, reply) -> None:
        if not reply.ok:
            err = reply.error or {}
            self.ack_message = S.FAULT_ACK_REFUSED.format(why=err.get("message", err.get("code")))
            return
        self.nav = "home"
        self._send("self_test", callback=self._refused)  # the self-test runs by itself

    def dismiss_summary(self) -> None:
        self.summary_dismissed = True
        self.nav = "home"
        self._route()

    # ------------------------------------------------------------------ clocks
    def lease_tick(self, _dt: float = 0.0) -> None:
        """Every 100 ms on the UI thread: renew the lease while this kiosk holds it."""
        if self.holding_lease and self.connected:
            self._send("lease", callback=self._leased, timeout_s=1.0)

    def _leased(self, reply) -> None:
        if reply.ok and not reply.result.get("held"):
            self.holding_lease = False

    def idle_tick(self, dt: float = 1.0) -> None:
        if self.state in ACTIVE or self.screen in ("treatment", "contact", "fault"):
            self.idle_s = 0.0
            self.blanked = False
            return
        self.idle_s += dt
        if self.idle_s >= self.blank_after_s:
            self.blanked = True

    def touched(self) -> None:
        """Any touch: restart the blank timer (the blank overlay swallows the waking tap)."""
        self.idle_s = 0.0

    def wake(self) -> None:
        self.idle_s = 0.0
        self.blanked = False
