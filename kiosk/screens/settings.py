"""Settings: preferences anyone may change and a PIN-locked service area (self-test, limits in
force, versions, recent events)."""

import time

from kivy.properties import StringProperty
from kivy.uix.screenmanager import Screen

from kiosk.screens import load_kv

load_kv(__file__)


def events_text(events: list) -> str:
    return "\n".join(
        f"{time.strftime('%d %b %H:%M', time.localtime(e.get('ts') or 0))}  {e.get('kind')}  "
        f"{e.get('code')}"
        for e in events[-8:]
    )


class SettingsScreen(Screen):
    pin = StringProperty("")
    events_text = staticmethod(events_text)

    @staticmethod
    def when(screening: dict | None) -> str:
        t = str((screening or {}).get("t") or "")
        return t[:16].replace("T", " ")  # ISO-8601 UTC -> "2026-11-30 09:12"

    def key(self, vm, digit: str) -> None:
        self.pin = (self.pin + digit)[-4:]
        if len(self.pin) == 4:
            vm.unlock_service(self.pin)
            self.pin = ""
