"""Summary: how it ended, time per zone, mean and peak current, charge, net DC, contact, streak."""

from kivy.uix.screenmanager import Screen

from kiosk import strings as S
from kiosk.screens import load_kv
from kiosk.viewmodel import mmss

load_kv(__file__)


def figures(summary: dict) -> str:
    if not summary:
        return ""
    rows = [
        (S.SUMMARY_TIME, mmss(summary.get("active_s"))),
        (S.SUMMARY_MEAN, f"{summary.get('mean_current_ua') or 0:.0f} µA"),
        (S.SUMMARY_PEAK, f"{summary.get('peak_current_ua') or 0:.0f} µA"),
        (S.SUMMARY_CHARGE, f"{(summary.get('charge_uc') or 0) / 1000:.2f} mC"),
        (S.SUMMARY_NET_DC, f"{summary.get('net_dc_charge_uc') or 0:+.1f} µC"),
        (S.SUMMARY_CONTACT, f"{summary.get('contact_quality_pct') or 0:.0f} %"),
    ]
    return "\n".join(f"{k}:  [b]{v}[/b]" for k, v in rows)


def zones(summary: dict) -> str:
    z = summary.get("zones") or {}
    return "\n".join(
        f"{S.ZONES.get(name, name)}:  [b]{mmss(d.get('active_s'))}[/b]" for name, d in z.items()
    )


class SummaryScreen(Screen):
    figures = staticmethod(figures)
    reason = staticmethod(lambda summary: summary.get("end_reason"))
    zones = staticmethod(zones)
