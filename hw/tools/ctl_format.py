"""Text of ``python -m hw.ctl``: the daemon's status, events and summaries as lines and tables.

Pure functions of the daemon's JSON (docs/protocol.md) to strings; no I/O.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _mmss(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def _local(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return _dt.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


def _ohm(value: float | None) -> str:
    return "- kOhm" if value is None else f"{value / 1000:.1f} kOhm"


def _table(headers: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        out = [
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def status_line(s: dict) -> str:
    """One line for a live display, the most useful figures first."""
    parts = [f"{s['state']} ({s['output']})"]
    if s.get("level") is not None:
        parts.append(f"level {s['level']}/{s['level_max']}")
    parts.append(f"set {s['setpoint_ua']:5.1f} meas {s['measured_ua']:5.1f} uA")
    parts.append(_ohm(s["impedance_ohm"]))
    parts.append(f"contact {s['contact_quality_pct']:3.0f} %" if s["contact"] else "NO CONTACT")
    if s.get("program"):
        parts.append(f"{s['program']} {s['step'] + 1}/{s['steps']} {s['zone']}")
        parts.append(f"{_mmss(s['step_left_s'])}/{_mmss(s['total_left_s'])} left")
    if s.get("fault"):
        parts.append(f"FAULT {s['fault']['code']}")
    if s.get("lease_holder"):
        parts.append(f"lease {s['lease_holder']}")
    return " | ".join(parts)


def summary_line(d: dict) -> str:
    return (
        f"treatment {d.get('treatment_id')} ({d.get('program')}) ended: {d.get('end_reason')}; "
        f"active {_num(d.get('active_s'), ' s')}, charge {_num(d.get('charge_uc'), ' uC')}, "
        f"mean {_num(d.get('mean_current_ua'), ' uA')}, "
        f"peak {_num(d.get('peak_current_ua'), ' uA')}, "
        f"contact {_num(d.get('contact_quality_pct'), ' %', 0)}"
    )


def event_line(msg: dict) -> str:
    name, d = msg["event"], msg.get("data", {})
    if name == "state":
        return f"state {d['from']} -> {d['to']}"
    if name == "cue":
        return f"cue {d['kind']}: step {d['step'] + 1} {d['zone']}: {d['text']}"
    if name == "fault":
        return f"FAULT {d['code']}: {d['message']} [{d['detail']}] {d['action']}"
    if name == "contact_lost":
        return f"contact lost ({d.get('reason', '?')}): output paused, timers stopped"
    if name == "contact_restored":
        return f"contact restored after {_num(d.get('lifted_s'), ' s')}"
    if name == "treatment_started":
        return f"treatment {d['treatment_id']} started: {d['program']}"
    if name == "treatment_finished":
        return summary_line(d)
    if name == "start_refused":
        return f"start refused: {d['reason']}"
    if name == "limit":
        return f"limit: {d['reason']}"
    return f"{name} {json.dumps(d)}"


def status_text(s: dict) -> str:
    """A full snapshot, one field per line."""
    rows = [("state", f"{s['state']} (output {s['output']})")]
    if s.get("program"):
        rows += [
            ("program", f"{s['program']} ({s['program_name']})"),
            ("step", f"{s['step'] + 1} of {s['steps']}: {s['zone']}, {s['motion']}"),
            ("", s["text"]),
            ("time left", f"{_mmss(s['step_left_s'])} in this step, {_mmss(s['total_left_s'])}"),
            ("level", f"{s['level']} (at most {s['level_max']} in this step)"),
        ]
    rows += [
        ("current", f"setpoint {s['setpoint_ua']:.1f} uA, measured {s['measured_ua']:.1f} uA"),
        ("impedance", _ohm(s["impedance_ohm"])),
        (
            "contact",
            f"{'yes' if s['contact'] else 'no'} (quality {s['contact_quality_pct']:.0f} %)",
        ),
    ]
    if s.get("program"):
        rows.append(
            ("charge", f"{s['charge_uc']:.1f} uC delivered, net DC {s['net_dc_charge_uc']:.2f} uC")
        )
    post = s["post"]
    if post["passed"] is None:
        test = "not run since start-up" if not post["valid"] else "valid"
    elif post["passed"]:
        test = "passed" + ("" if post["valid"] else " (no longer valid: a fault since)")
    else:
        test = f"FAILED at {post['failed_step']}"
    rows.append(("self-test", test))
    f = s.get("fault")
    rows.append(("fault", f"{f['code']}: {f['message']}" if f else "none"))
    if f:
        rows += [("", f"detail: {f['detail']}"), ("", f"to do: {f['action']}")]
    rows.append(("lease", f"held by {s['lease_holder']}" if s.get("lease_holder") else "nobody"))
    if s.get("last_summary"):
        rows.append(("last", summary_line(s["last_summary"])))
    return "\n".join(f"{k:<10} {v}".rstrip() for k, v in rows)
