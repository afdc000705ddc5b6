"""The view-model's first-use and settings part: the contraindication screening (recorded by the
daemon), the preferences (the daemon's buzzer, the panel's backlight), the PIN-locked service
area and the desktop simulation panel's commands.

A mixin of ``kiosk.viewmodel.ViewModel`` (whose Kivy properties it reads and sets); UI thread only.
"""

from __future__ import annotations

from kiosk import strings as S


class PrefsMixin:
    def _got_screening(self, reply) -> None:
        if not reply.ok and (reply.error or {}).get("code") == "UNKNOWN_COMMAND":
            # An older daemon cannot record the answers: ask them anyway, every session.
            self.screening_supported = False
            self.screening = None
            self.screening_known = True
        elif reply.ok:
            self.screening = reply.result
            self.screening_known = True
        self._route()

    def screening_ok(self) -> bool:
        if self.screening_local_pass:
            return True
        if not self.screening_known:
            return True  # not asked yet: do not flash the questions while loading
        return bool(self.screening and self.screening.get("passed"))

    def submit_screening(self, answers: dict[str, bool]) -> None:
        yes = [k for k, _ in S.SCREENING_QUESTIONS if answers.get(k)]
        self.screening_stop = yes
        if not self.screening_supported:
            self.screening_local_pass = not yes
            self._route()
            return
        self._send("screening", {"answers": dict(answers)}, callback=self._screened)

    def answer_screening_again(self) -> None:
        """After a yes: the questions again from the first (the yes stays on record, and the
        daemon refuses every start until new answers, all no, are recorded)."""
        self.screening_stop = []

    def _screened(self, reply) -> None:
        if reply.ok:
            self._send("screening_status", callback=self._got_screening)
        elif (reply.error or {}).get("code") == "UNKNOWN_COMMAND":
            self.screening_supported = False
            self.screening_local_pass = not self.screening_stop
            self.notice = S.SCREENING_NOT_RECORDED
            self._route()
        else:
            self._refused(reply)

    def set_sound(self, on: bool) -> None:
        """The buzzer (relocate cues) on or off: the daemon drives it, so the daemon is asked
        (``set_sound`` {"on"} -> {"sound"}). An older daemon without it: said once, no toggle."""

        def got(reply) -> None:
            if reply.ok:
                self.sound = bool(reply.result.get("sound", on))
            elif (reply.error or {}).get("code") == "UNKNOWN_COMMAND":
                self.sound_supported = False
                self.notice = S.OLD_SERVICE.format(what=S.SOUND.lower())
            else:
                self._refused(reply)

        self._send("set_sound", {"on": bool(on)}, callback=got)

    def set_brightness(self, pct: float) -> None:
        """The panel's backlight (kiosk-local: the screen is the kiosk's, not the daemon's)."""
        if self.backlight is None:
            return
        try:
            self.brightness_pct = self.backlight.set_pct(pct)
        except OSError as e:
            self.notice = S.BRIGHTNESS_FAILED.format(why=e.strerror or e)

    def run_self_test(self) -> None:
        self._send("self_test", callback=self._refused)

    def unlock_service(self, pin: str) -> bool:
        self.service_unlocked = pin == self.service_pin
        self.notice = "" if self.service_unlocked else S.PIN_WRONG
        if self.service_unlocked:
            self.refresh_service_info()
        return self.service_unlocked

    def refresh_service_info(self) -> None:
        """The service area's figures: the last self-test's steps, the limits in force with the
        file each came from, the versions (``service_info``), and the recent events."""

        def got(reply) -> None:
            if reply.ok:
                ok = isinstance(reply.result, dict)
                self.service_info = dict(reply.result) if ok else {"unavailable": True}
            elif (reply.error or {}).get("code") == "UNKNOWN_COMMAND":
                self.service_info = {"unavailable": True}

        self._send("service_info", callback=got)
        self._send("events", {"limit": 20}, callback=self._got_events)

    def on_post_passed(self, _vm, passed) -> None:
        # A self-test ended while the service area is open: show its new steps.
        if passed is not None and self.service_unlocked:
            self.refresh_service_info()

    def sim_action(self, action: str, **args) -> None:
        def got(reply) -> None:
            if reply.ok:
                self.sim_state = dict(reply.result)
                self.sim_message = ""
            else:
                err = reply.error or {}
                if err.get("code") == "UNKNOWN_COMMAND":
                    self.sim_message = S.OLD_SERVICE.format(what="sim")
                else:
                    self.sim_message = f"{err.get('code')}: {err.get('message')}"

        self._send("sim", {"action": action, **args}, callback=got)
