"""Contact check: a live contact-quality meter with guidance that follows it."""

from kivy.properties import BooleanProperty
from kivy.uix.screenmanager import Screen

from kiosk.screens import load_kv

load_kv(__file__)


class ContactScreen(Screen):
    landscape = BooleanProperty(True)
