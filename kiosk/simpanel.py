"""The desktop simulation panel (daemon with --sim only): lift and place the electrodes, press and
release the e-stop, plug the charger, choose the skin, inject and clear every fault the board
knows. It drives the daemon's ``sim`` command (docs/protocol.md); the daemon refuses it on real
hardware. The buttons are built once per set of faults and skins and then only recoloured, so a
tap during a treatment costs the UI thread one small update, not a rebuilt panel."""

from __future__ import annotations

import os

from kivy.lang import Builder
from kivy.uix.boxlayout import BoxLayout

from kiosk import strings as S
from kiosk import theme
from kiosk.widgets import KButton, change

Builder.load_file(os.path.join(os.path.dirname(__file__), "simpanel.kv"))

# Shown before the daemon's first ``sim state`` reply (hw.hal.sim.board.FAULTS, SKINS).
DEFAULT_FAULTS = (
    "adc_stuck",
    "adc_current_stuck",
    "dac_stuck",
    "spi_error",
    "shorted_shunt",
    "welded_relay",
    "dead_comparator",
    "lift_off",
    "charger",
    "overcurrent",
    "open_circuit",
    "estop",
    "estop_wire_broken",
    "charger_wire_broken",
    "estop_bridged",
    "charger_bridged",
    "rail_low",
    "adc_reference",
)
DEFAULT_SKINS = ("normal", "damp", "dry", "sweaty")
# The three physical actions get their own toggles (words for "on" and "off").
TOGGLES = (
    ("lift_off", S.SIM_LIFT, S.SIM_PLACE),
    ("estop", S.SIM_ESTOP, S.SIM_ESTOP_RELEASE),
    ("charger", S.SIM_CHARGER, S.SIM_CHARGER_OUT),
)
TOGGLED = tuple(t[0] for t in TOGGLES)
FONT = "15sp"  # a desktop panel used with a mouse; every single word fits its button


class SimButton(KButton):
    """A panel button that knows which fault or skin it drives (``fault`` / ``skin``)."""

    fault = ""
    skin = ""


def fault_label(name: str) -> str:
    return S.SIM_FAULT_NAMES.get(name, name.replace("_", " "))


class SimPanel(BoxLayout):
    def bind_vm(self, vm) -> None:
        self.vm = vm
        self._built: tuple | None = None
        vm.bind(sim_state=self.fill)
        self.fill(vm)

    def _build(self, faults: tuple, skins: tuple) -> None:
        vm = self.vm
        for box in (self.ids.toggles, self.ids.skins, self.ids.faults):
            box.clear_widgets()
        for name, _on_text, _off_text in TOGGLES:
            b = SimButton(font_size=FONT, bold=False)
            b.fault = name
            b.bind(on_release=self._toggle)
            self.ids.toggles.add_widget(b)
        for skin in skins:
            b = SimButton(text=S.SIM_SKINS.get(skin, skin), font_size=FONT, bold=False)
            b.skin = skin
            b.bind(on_release=lambda _b, s=skin: vm.sim_action("skin", skin=s))
            self.ids.skins.add_widget(b)
        for name in faults:
            if name in TOGGLED:
                continue
            b = SimButton(text=fault_label(name), font_size=FONT, bold=False)
            b.fault = name
            b.bind(on_release=self._toggle)
            self.ids.faults.add_widget(b)
        self._built = (faults, skins)

    def _toggle(self, b: SimButton) -> None:
        active = b.fault in (self.vm.sim_state.get("faults") or [])
        self.vm.sim_action("clear" if active else "inject", fault=b.fault)

    def fill(self, vm, *_):
        st = vm.sim_state or {}
        faults = tuple(st.get("known_faults") or DEFAULT_FAULTS)
        skins = tuple(st.get("skins") or DEFAULT_SKINS)
        if self._built != (faults, skins):
            self._build(faults, skins)
        active = set(st.get("faults") or [])
        words = {name: (on, off) for name, on, off in TOGGLES}
        for box in (self.ids.toggles, self.ids.faults):
            for b in box.children:
                on = b.fault in active
                if b.fault in words:
                    change(b, "text", words[b.fault][1 if on else 0])
                    change(b, "fill", theme.AMBER if on else theme.PANEL)
                    change(b, "ink", theme.ON_AMBER if on else theme.TEXT)
                else:
                    change(b, "fill", theme.STOP_RED if on else theme.PANEL)
        for b in self.ids.skins.children:
            on = st.get("skin") == b.skin
            change(b, "fill", theme.ACCENT if on else theme.PANEL)
            change(b, "ink", theme.ON_ACCENT if on else theme.TEXT)
