"""Fault: what happened and what to do in plain words (the daemon's message and action), and an
acknowledge that needs a deliberate press-and-hold; the self-test then runs by itself."""

from kivy.uix.screenmanager import Screen

from kiosk.screens import load_kv

load_kv(__file__)


class FaultScreen(Screen):
    @staticmethod
    def field(fault: dict, key: str) -> str:
        # (kv binds to the dict passed in; ``fault.get`` in kv would not rebind)
        return str(fault.get(key) or "")
