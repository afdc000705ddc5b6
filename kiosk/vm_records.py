"""The view-model's home and history part: the totals and treatments the daemon records, the
figures the home screen derives from them, one treatment's detail, the events log, CSV export.

A mixin of ``kiosk.viewmodel.ViewModel`` (whose Kivy properties it reads and sets: ``totals``,
``history``, ``detail``, ``events_log``, ``notice``); UI thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kiosk import strings as S


class RecordsMixin:
    def refresh_home(self) -> None:
        self._send("totals", callback=self._got_totals)
        self._send("history", {"limit": 100}, callback=self._got_history)

    def _got_totals(self, reply) -> None:
        if reply.ok:
            self.totals = dict(reply.result)

    def _got_history(self, reply) -> None:
        if reply.ok:
            self.history = list(reply.result)

    def zone_name(self, zone: str | None) -> str:
        return S.ZONES.get(zone or "", (zone or "").capitalize())

    def week_count(self) -> int:
        """Treatments since Monday 00:00 local time."""
        lt = time.localtime(self.now())
        midnight = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
        monday = midnight - lt.tm_wday * 86400
        return sum(1 for h in self.history if (h.get("started_at") or 0) >= monday)

    def streak_text(self) -> str:
        n = int(self.totals.get("streak_days") or 0)
        if n == 0:
            return S.STREAK_NONE
        return S.STREAK_ONE if n == 1 else S.STREAK.format(n=n)

    def today_text(self) -> str:
        if not self.totals:
            return ""
        left_s = float(self.totals.get("daily_max_s") or 0) - float(
            self.totals.get("today_active_s") or 0
        )
        if left_s <= 0:
            return S.TODAY_USED_UP
        return S.TODAY_LEFT.format(min=int(left_s // 60))

    def last_text(self) -> str:
        if not self.history:
            return S.LAST_NONE
        h = self.history[0]
        when = time.strftime("%d %b", time.localtime(h.get("started_at") or 0)).lstrip("0")
        return S.LAST.format(name=h.get("program_name") or h.get("program_id"), when=when)

    def open_treatment(self, treatment_id: int) -> None:
        self._send("treatment", {"id": int(treatment_id)}, callback=self._got_detail)

    def _got_detail(self, reply) -> None:
        if not self._refused(reply):
            self.detail = dict(reply.result)

    def _got_events(self, reply) -> None:
        if reply.ok:
            self.events_log = list(reply.result)

    def export_csv(self, path_for: Callable[[], str]) -> None:
        """Ask the daemon for the CSV and write it to ``path_for()`` (USB stick or a file)."""

        def got(reply) -> None:
            if self._refused(reply):
                return
            try:
                path = path_for()
                with open(path, "w", newline="") as f:
                    f.write(reply.result["csv"])
            except OSError as e:
                self.notice = S.EXPORT_FAILED.format(why=e.strerror or e)
                return
            self.notice = S.EXPORTED.format(path=path)

        self._send("export_csv", {"what": "treatments"}, callback=got, timeout_s=10.0)
