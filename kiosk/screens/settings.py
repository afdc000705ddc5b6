"""Settings: preferences anyone may change and a PIN-locked service area (self-test, limits in
force, versions, recent events)."""

import time

from kivy.properties import StringProperty
from kivy.uix.screenmanager import Screen
from kivy.utils import escape_markup as esc

from kiosk import strings as S
from kiosk.screens import load_kv

load_kv(__file__)


def events_text(events: list) -> str:
    lines = []
    for e in list(events or [])[-8:]:
        if not isinstance(e, dict):
            continue
        ts = e.get("ts")
        when = (
            time.strftime("%d %b %H:%M", time.localtime(ts))
            if isinstance(ts, int | float) and not isinstance(ts, bool) and 0 <= ts < 2**40
            else "?"
        )
        lines.append(f"{when}  {e.get('kind')}  {e.get('code')}")
    return "\n".join(lines)


def _fig(v) -> str:
    return f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def _d(x) -> dict:
    return x if isinstance(x, dict) else {}


def _l(x) -> list:
    return x if isinstance(x, list) else []


def service_text(info: dict, events: list) -> str:
    """The service area as markup lines: the self-test with each step's figures, the limits in
    force grouped by the file they came from, the versions and the real-time process, recent
    events. Whatever the daemon sent is escaped (a "[" is text, not markup) and odd shapes are
    skipped, never raised on."""
    info = _d(info)
    if not info:
        return S.SVC_LOADING
    if info.get("unavailable"):
        return S.OLD_SERVICE.format(what="service_info") + "\n\n" + esc(events_text(events))
    out = []
    post = info.get("post")
    if not isinstance(post, dict):
        verdict = S.SVC_NOT_RUN
    elif post.get("passed") is True:
        verdict = S.SVC_PASSED
    else:
        verdict = S.SVC_FAILED.format(step=post.get("failed_step"), reason=post.get("reason"))
    out.append("[b]" + esc(S.SVC_SELF_TEST.format(verdict=verdict)) + "[/b]")
    for step in _l(_d(post).get("steps")):
        step = _d(step)
        figs = ", ".join(f"{k}={_fig(v)}" for k, v in step.items() if k != "step")
        out.append(esc(f"  {step.get('step')}" + (f":  {figs}" if figs else "")))
    by_file: dict[str, list[str]] = {}
    for row in _l(info.get("limits")):
        row = _d(row)
        line = f"  {row.get('key')} = {_fig(row.get('value'))}"
        by_file.setdefault(str(row.get("file")), []).append(esc(line))
    for file, rows in by_file.items():
        out += ["", "[b]" + esc(S.SVC_LIMITS.format(file=file)) + "[/b]", *rows]
    v, rt = _d(info.get("versions")), _d(info.get("realtime"))
    out += ["", "[b]" + esc(S.SVC_VERSIONS) + "[/b]"]
    out.append(esc("  " + ", ".join(f"{k} {_fig(x)}" for k, x in v.items())))
    out.append(
        esc(
            f"  {S.SVC_REALTIME}: {rt.get('process')}, pid {rt.get('pid')}, "
            f"{rt.get('scheduling') or '-'}; sim {info.get('sim')}"
        )
    )
    if events:
        out += ["", "[b]" + esc(S.SVC_EVENTS) + "[/b]", esc(events_text(events))]
    return "\n".join(out)


class SettingsScreen(Screen):
    pin = StringProperty("")
    events_text = staticmethod(events_text)
    service_text = staticmethod(service_text)

    @staticmethod
    def when(screening: dict | None) -> str:
        t = str((screening or {}).get("t") or "")
        return t[:16].replace("T", " ")  # ISO-8601 UTC -> "2026-11-30 09:12"

    def key(self, vm, digit: str) -> None:
        self.pin = (self.pin + digit)[-4:]
        if len(self.pin) == 4:
            vm.unlock_service(self.pin)
            self.pin = ""
