"""Start-up: connecting, the self-test, and what to do if the service is missing or failed."""

from kivy.properties import BooleanProperty
from kivy.uix.screenmanager import Screen

from kiosk.screens import load_kv

load_kv(__file__)


class StartupScreen(Screen):
    show_details = BooleanProperty(False)
