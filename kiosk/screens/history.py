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
from kiosk.widgets import Dot, KButton, change

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
        self._vm = None
        self._rows: list = []  # the row buttons, made once each and reused
        self._dots: list = []  # the calendar's days, made once
        self._empty = Label(text=S.HISTORY_EMPTY, size_hint_y=None, height="56dp")
        self._dirty = True
        Clock.schedule_once(self._bind, 0)

    def _bind(self, _dt):
        from kivy.app import App

        vm = self._vm = App.get_running_app().vm
        vm.bind(history=self._changed, detail=self._changed)
        self.fill(vm)  # built at start-up, while the start-up screen shows

    def _changed(self, vm, *_):
        # A history load while another screen shows (the treatment's: the bench loads it every
        # 20 s) waits until this screen is shown: no widget work behind a treatment.
        if self.manager is not None and self.manager.current == self.name:
            self.fill(vm)
        else:
            self._dirty = True

    def on_pre_enter(self, *_):
        if self._dirty and self._vm is not None:
            self.fill(self._vm)

    def fill(self, vm, *_):
        """The rows and the calendar from ``vm.history``: existing widgets get new text and
        colours (set only when they differ: a Label re-renders on every assignment)."""
        self._dirty = False
        rows = self.ids.rows
        shown = vm.history[:30]
        for i, h in enumerate(shown):
            if i == len(self._rows):
                b = KButton(
                    size_hint_y=None, height="56dp", bold=False, halign="left", font_size="20sp"
                )
                b.bind(on_release=lambda b: self._vm.open_treatment(b.treatment_id))
                self._rows.append(b)
            b = self._rows[i]
            when = time.strftime("%a %d %b", time.localtime(h.get("started_at") or 0))
            ended = S.END_REASONS.get(h.get("end_reason"), h.get("end_reason"))
            text = f"{when} · {h.get('program_name')} · {mmss(h.get('active_s'))} · {ended}"
            chosen = vm.detail.get("id") == h.get("id")
            b.treatment_id = h.get("id")
            change(b, "text", text)
            change(b, "fill", theme.ACCENT if chosen else theme.PANEL)
            change(b, "ink", theme.ON_ACCENT if chosen else theme.TEXT)
            if b.parent is None:
                rows.add_widget(b)
        for b in self._rows[len(shown) :]:
            if b.parent is not None:
                rows.remove_widget(b)
        if not shown and self._empty.parent is None:
            rows.add_widget(self._empty)
        elif shown and self._empty.parent is not None:
            rows.remove_widget(self._empty)
        cal = self.ids.calendar
        for i, lit in enumerate(calendar_days(vm.history, vm.now())):
            if i == len(self._dots):
                self._dots.append(Dot())
                cal.add_widget(self._dots[i])
            self._dots[i].lit = lit

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
