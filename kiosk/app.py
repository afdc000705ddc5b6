"""The kiosk App: a ScreenManager whose current screen follows the view-model, the service-lost
and blank layers over it, and on the desktop simulation the sim panel beside it."""

from __future__ import annotations

import os

from kivy.app import App
from kivy.lang import Builder
from kivy.properties import BooleanProperty, ObjectProperty, StringProperty
from kivy.uix.screenmanager import NoTransition, ScreenManager

import kiosk.widgets  # noqa: F401  (kv rules)
from kiosk.screens import NAMES
from kiosk.viewmodel import ViewModel

Builder.load_file(os.path.join(os.path.dirname(__file__), "app.kv"))


def make_screens() -> list:
    import importlib

    out = []
    for name in NAMES:
        mod = importlib.import_module(f"kiosk.screens.{name}")
        cls = next(
            v
            for k, v in vars(mod).items()
            if k.endswith("Screen") and k != "Screen" and isinstance(v, type)
        )
        out.append(cls(name=name))
    return out


class KioskApp(App):
    vm = ObjectProperty(None)
    socket_path = StringProperty("")
    show_sim_panel = BooleanProperty(False)

    def __init__(self, vm: ViewModel, *, link=None, socket_path: str = "", sim_panel=False, **kw):
        super().__init__(**kw)
        self.vm = vm
        self.link = link
        self.socket_path = socket_path
        self.show_sim_panel = sim_panel
        self.title = "Microcurrent kiosk"

    def build(self):
        root = Builder.load_string("KioskRoot:")
        sm: ScreenManager = root.ids.sm
        sm.transition = NoTransition()  # a still screen costs nothing; no motion without change
        for s in make_screens():
            sm.add_widget(s)

        def size_all(_sm, size) -> None:
            # Every screen is laid out at the manager's size now, not when first shown: the
            # first frame of a screen (labels wrapped to their new size re-render) used to fall
            # at the start of a treatment, delaying the lease renewal.
            for screen in sm.screens:
                screen.size = size

        sm.bind(size=size_all)
        self.vm.bind(screen=lambda _vm, name: setattr(sm, "current", name))
        sm.current = self.vm.screen
        if self.show_sim_panel:
            from kiosk.simpanel import SimPanel

            panel = SimPanel(size_hint_x=None, width=300)
            panel.bind_vm(self.vm)
            root.add_widget(panel)
        from kivy.core.window import Window
        from kivy.metrics import sp

        from kiosk import theme
        from kiosk.widgets import Digits

        Digits.prewarm((sp(theme.DIGITS_SP), sp(80)))  # the treatment screen's countdowns, level
        Window.bind(on_touch_down=lambda *_: self.vm.touched())
        from kiosk.display import render_each_frame

        render_each_frame(Window)
        Window.clearcolor = (0.07, 0.09, 0.12, 1)
        return root

    def on_start(self):
        if self.link is not None:
            self.link.start()

    def on_stop(self):
        """Window closed or SIGTERM: a running treatment is stopped (ramp-down) before the
        connection closes; otherwise the daemon would trip LEASE_EXPIRED on the disconnect."""
        if self.link is None:
            return
        from kiosk.viewmodel import ACTIVE

        if self.vm.state in ACTIVE:
            self.link.request("stop", timeout_s=1.0).done.wait(1.0)
        self.link.close()
