"""Treatment: zone diagram, glide/hold and the step's text, countdowns, big level -/+, the live
current trace, the contact meter, pause/resume and a large STOP that is always on screen."""

from kivy.clock import Clock
from kivy.uix.screenmanager import Screen

from kiosk.screens import load_kv

load_kv(__file__)


class TreatmentScreen(Screen):
    def on_kv_post(self, _base):
        Clock.schedule_once(self._bind, 0)

    def _bind(self, _dt):
        from kivy.app import App

        App.get_running_app().vm.bind(cue_count=lambda *_: self.ids.face.flash())

    @staticmethod
    def cue_shown(cue_text: str, lifted: bool, recontact: bool, state: str) -> bool:
        """The banner shows a cue (accent colours) rather than a warning or the step."""
        return (
            bool(cue_text)
            and not lifted
            and not recontact
            and state
            not in (
                "paused",
                "ramp_down",
            )
        )

    def banner(self, vm) -> str:
        from kiosk import strings as S

        if vm.lifted:
            return S.CONTACT_LOST
        if vm.state == "paused":
            return S.PAUSED
        if vm.state == "ramp_down":
            return S.RAMPING_DOWN
        if vm.recontact:
            return S.RECONTACT
        if vm.cue_text:
            return vm.cue_text  # "Move a little" / "Next: Forehead", with the zone's pulse
        return S.STEP_OF.format(i=int(vm.step) + 1, n=max(int(vm.steps), int(vm.step) + 1))
