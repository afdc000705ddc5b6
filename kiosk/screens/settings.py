"""Settings: preferences anyone may change and a PIN-locked service area (self-test, limits in
force, versions, recent events)."""

import time

from kivy.properties import StringProperty
from kivy.uix.screenmanager import Screen

from kiosk import strings as S
from kiosk.screens import load_kv

load_kv(__file__)


def events_text(events: list) -> str:
    return "\n".join(
        f"{time.strftime('%d %b %H:%M', time.localtime(e.get('ts') or 0))}  {e.get('kind')}  "
        f"{e.get('code')}"
        for e in events[-8:]
    )


def _fig(v) -> str:
    return f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def service_text(info: dict, events: list) -> str:
    """The service area as lines: the self-test with each step's figures, the limits in force
    grouped by the file they came from, the versions and the real-time process, recent events."""
    if not info:
        return S.SVC_LOADING
    if info.get("unavailable"):
        return S.OLD_SERVICE.format(what="service_info") + "\n\n" + events_text(events)
    out = []
    post = info.get("post")
    if post is None:
        verdict = S.SVC_NOT_RUN
    elif post.get("passed"):
        verdict = S.SVC_PASSED
    else:
        verdict = S.SVC_FAILED.format(step=post.get("failed_step"), reason=post.get("reason"))
    out.append("[b]" + S.SVC_SELF_TEST.format(verdict=verdict) + "[/b]")
    for step in (post or {}).get("steps", []):
        figs = ", ".join(f"{k}={_fig(v)}" for k, v in step.items() if k != "step")
        out.append(f"  {step.get('step')}" + (f":  {figs}" if figs else ""))
    by_file: dict[str, list[str]] = {}
    for row in info.get("limits", []):
        by_file.setdefault(str(row.get("file")), []).append(
            f"  {row.get('key')} = {_fig(row.get('value'))}"
        )
    for file, rows in by_file.items():
        out += ["", "[b]" + S.SVC_LIMITS.format(file=file) + "[/b]", *rows]
    v, rt = info.get("versions", {}), info.get("realtime", {})
    out += ["", "[b]" + S.SVC_VERSIONS + "[/b]"]
    out.append("  " + ", ".join(f"{k} {_fig(x)}" for k, x in v.items()))
    out.append(
        f"  {S.SVC_REALTIME}: {rt.get('process')}, pid {rt.get('pid')}, "
        f"{rt.get('scheduling') or '-'}; sim {info.get('sim')}"
    )
    if events:
        out += ["", "[b]" + S.SVC_EVENTS + "[/b]", events_text(events)]
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
