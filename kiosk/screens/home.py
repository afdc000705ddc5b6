"""Home: the programs, a big start, the last treatment, the streak, the week and today's time."""

from kivy.clock import Clock
from kivy.uix.screenmanager import Screen

from kiosk import strings as S
from kiosk import theme
from kiosk.screens import load_kv
from kiosk.widgets import KButton

load_kv(__file__)


def program_line(p: dict) -> str:
    zones = []
    for s in p.get("steps", []):
        z = S.ZONES.get(s["zone"], s["zone"])
        if z not in zones:
            zones.append(z)
    minutes = max(1, round(p.get("duration_s", 0) / 60))
    return (
        f"[b]{p['name']}[/b]\n{S.MINUTES.format(n=minutes)}\n[size=20sp]{', '.join(zones)}[/size]"
    )


class HomeScreen(Screen):
    def on_kv_post(self, _base):
        Clock.schedule_once(self._bind, 0)

    def _bind(self, _dt):
        from kivy.app import App

        vm = App.get_running_app().vm
        vm.bind(programs=self.fill, selected_program=self.fill)
        self.fill(vm)

    def fill(self, vm, *_):
        box = self.ids.programs
        box.clear_widgets()
        for p in vm.programs:
            chosen = p["id"] == vm.selected_program
            b = KButton(
                text=program_line(p),
                markup=True,
                fill=theme.ACCENT if chosen else theme.PANEL,
                ink=theme.ON_ACCENT if chosen else theme.TEXT,
                font_size="22sp",
                bold=False,
            )
            b.bind(on_release=lambda _b, pid=p["id"]: vm.select_program(pid))
            box.add_widget(b)
