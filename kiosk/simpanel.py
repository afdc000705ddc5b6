"""The desktop simulation panel (daemon with --sim only): lift and place the electrodes, choose
the skin, press and release the e-stop, plug the charger, inject and clear every fault. It drives
the daemon's ``sim`` command (docs/protocol.md); the daemon refuses it on real hardware."""

from __future__ import annotations

import os

from kivy.lang import Builder
from kivy.uix.boxlayout import BoxLayout

from kiosk import theme
from kiosk.widgets import KButton

Builder.load_file(os.path.join(os.path.dirname(__file__), "simpanel.kv"))

# Shown before the daemon's first ``sim state`` reply (hw.sim.board.FAULTS, skins).
DEFAULT_FAULTS = (
    "lift_off",
    "estop",
    "charger",
    "overcurrent",
    "spi_error",
    "adc_stuck",
    "adc_current_stuck",
    "dac_stuck",
    "shorted_shunt",
    "welded_relay",
    "dead_comparator",
    "open_circuit",
    "rail_low",
    "adc_reference",
)
DEFAULT_SKINS = ("normal", "dry", "damp", "sweaty")


class SimPanel(BoxLayout):
    def bind_vm(self, vm) -> None:
        self.vm = vm
        vm.bind(sim_state=self.fill)
        self.fill(vm)

    def fill(self, vm, *_):
        st = vm.sim_state or {}
        active = set(st.get("faults") or [])
        skins = self.ids.skins
        skins.clear_widgets()
        for skin in st.get("skins") or DEFAULT_SKINS:
            on = st.get("skin") == skin
            b = KButton(
                text=skin,
                font_size="18sp",
                bold=False,
                fill=theme.ACCENT if on else theme.PANEL,
                ink=theme.ON_ACCENT if on else theme.TEXT,
            )
            b.bind(on_release=lambda _b, s=skin: vm.sim_action("skin", skin=s))
            skins.add_widget(b)
        faults = self.ids.faults
        faults.clear_widgets()
        for f in st.get("known_faults") or DEFAULT_FAULTS:
            on = f in active
            b = KButton(
                text=f.replace("_", " "),
                font_size="16sp",
                bold=False,
                size_hint_min_y=44,
                fill=theme.STOP_RED if on else theme.PANEL,
            )
            b.bind(
                on_release=lambda _b, f=f, on=on: vm.sim_action(
                    "clear" if on else "inject", fault=f
                )
            )
            faults.add_widget(b)
