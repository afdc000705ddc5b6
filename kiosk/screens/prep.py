"""Preparation: skin prep for gel-free use and how to hold the electrodes, with a drawing."""

from kivy.uix.screenmanager import Screen

from kiosk.screens import load_kv

load_kv(__file__)


class PrepScreen(Screen):
    pass
