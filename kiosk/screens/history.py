"""History: treatments by date with how each ended, one treatment's zones, totals, a streak
calendar (the last 28 days) and CSV export (USB stick if mounted, else a file)."""

import glob
import os
import time

from kivy.clock import Clock
from kivy.uix.label import Label
from kivy.uix.screenmanager import Screen

from kiosk import strings as S
from kiosk import theme
from kiosk.screens import load_kv
from kiosk.viewmodel import mmss
from kiosk.widgets import Dot, KButton

load_kv(__file__)


def export_path() -> str:
    """A mounted USB stick (/media/*/*) if there is one, else the kiosk's working directory."""
    name = time.strftime("microcurrent-history-%Y%m%d-%H%M%S.csv")
    sticks = sorted(p for p in glob.glob("/media/*/*") if os.path.ismount(p))
    return os.path.join(sticks[0] if sticks else os.getcwd(), name)


def calendar_days(history: list, now_s: float, days: int = 28) -> list[bool]:
    """For each of the last ``days`` days (oldest first): was there a treatment?"""
    done = {time.strftime("%Y-%m-%d", time.localtime(h.get("started_at") or 0)) for h in history}
    return [
        time.strftime("%Y-%m-%d", time.localtime(now_s - (days - 1 - i) * 86400)) in done
        for i in range(days)
    ]


class HistoryScreen(Screen):
    export_path = staticmethod(export_path)

    def on_kv_post(self, _base):
        Clock.schedule_once(self._bind, 0)

    def _bind(self, _dt):
        from kivy.app import App

        vm = App.get_running_app().vm
        vm.bind(history=self.fill, detail=self.fill)
        self.fill(vm)

    def fill(self, vm, *_):
        rows = self.ids.rows
        rows.clear_widgets()
        for h in vm.history[:30]:
            when = time.strftime("%a %d %b", time.localtime(h.get("started_at") or 0))
            ended = S.END_REASONS.get(h.get("end_reason"), h.get("end_reason"))
            text = f"{when} · {h.get('program_name')} · {mmss(h.get('active_s'))} · {ended}"
            b = KButton(
                text=text,
                size_hint_y=None,
                height="56dp",
                bold=False,
                halign="left",
                font_size="20sp",
                fill=theme.ACCENT if vm.detail.get("id") == h.get("id") else theme.PANEL,
                ink=theme.ON_ACCENT if vm.detail.get("id") == h.get("id") else theme.TEXT,
            )
            tid = h.get("id")
            b.bind(on_release=lambda _b, i=tid: vm.open_treatment(i))
            rows.add_widget(b)
        if not vm.history:
            rows.add_widget(Label(text=S.HISTORY_EMPTY, size_hint_y=None, height="56dp"))
        cal = self.ids.calendar
        cal.clear_widgets()
        for lit in calendar_days(vm.history, vm.now()):
            cal.add_widget(Dot(lit=lit))

    @staticmethod
    def totals_text(totals: dict) -> str:
        return S.HISTORY_TOTALS.format(
            count=int(totals.get("count") or 0), min=int((totals.get("active_s") or 0) // 60)
        )

    def detail_text(self, detail: dict) -> str:
        if not detail:
            return ""
        lines = [f"[b]{detail.get('program_name')}[/b]"]
        for z in detail.get("zones") or []:
            lines.append(
                f"{S.ZONES.get(z['zone'], z['zone'])}: {mmss(z.get('active_s'))}, "
                f"{z.get('mean_current_ua') or 0:.0f} µA"
            )
        return "\n".join(lines)
