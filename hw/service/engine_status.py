"""The engine's ``status``: one dict of the treatment, the output, the fault and the loop's health
(docs/protocol.md, ``status``), read from the loop's live state and its last snapshot.
"""

from __future__ import annotations

from hw.control.tickhist import sparse
from hw.service.treatment import Treatment


def status_dict(state: str, loop, treatment: Treatment | None, last_summary: dict | None) -> dict:
    """``state`` is the engine's; ``loop`` the ControlLoop (or the real-time process's LoopProxy);
    ``last_summary`` the finished treatment's figures (None unless the state is ``finished``)."""
    snap = loop.snapshot
    tr = treatment
    guard = loop.guard
    fault = guard.fault
    out = {
        "state": state,
        "output": str(loop.state),  # live, not the snapshot (which lags up to 5 ms)
        "program": tr.program.id if tr else None,
        "program_name": tr.program.name if tr else None,
        "step": tr.step_index if tr else None,
        "steps": len(tr.program.steps) if tr else None,
        "zone": tr.step.zone if tr else None,
        "motion": tr.step.motion if tr else None,
        "text": tr.step.text if tr else None,
        "step_left_s": max(0.0, tr.step.duration_s - tr.step_elapsed_s) if tr else None,
        "total_left_s": tr.total_left_s if tr else None,
        "level": min(tr.level, tr.step.max_level) if tr else None,
        "level_max": tr.step.max_level if tr else None,
        "setpoint_ua": snap.amplitude_ua if snap else 0.0,
        "measured_ua": snap.measured_ua if snap else 0.0,
        "impedance_ohm": snap.impedance_ohm if snap else None,
        "contact": snap.contact if snap else False,
        "contact_quality_pct": snap.contact_quality_pct if snap else 0.0,
        "charge_uc": snap.charge_uc if snap and tr else 0.0,
        "net_dc_charge_uc": snap.net_charge_uc if snap and tr else 0.0,
        "fault": fault.as_dict() if fault else None,
        # Current flowing with the output off or tripped (a welded relay and a stage fault):
        # the alarm tells the person to take the electrodes off; show it before the fault.
        "residual_ua": snap.residual_ua if snap else 0.0,
        "alarm": guard.alarm.as_dict() if guard.alarm else None,
        "post": {
            "valid": guard.post_valid,
            "passed": (loop.post_result or {}).get("passed"),
            "failed_step": (loop.post_result or {}).get("failed_step"),
        },
        "last_summary": last_summary,
        # The real-time loop's own health: ticks run, ticks that overran their period, and
        # the worst gap between two ticks since it started (a service engineer's figure).
        "loop": {
            "ticks": snap.ticks if snap else 0,
            "overruns": snap.overruns if snap else 0,
            "gap_max_ms": round(snap.gap_max_ms, 3) if snap else 0.0,
            # Every tick since start: [[bin's lower edge in us, count], ...]
            # (hw.control.tickhist), start lateness and gap between starts; subtract two
            # readings for a window.
            "late_us_hist": sparse(snap.late_hist) if snap else [],
            "gap_us_hist": sparse(snap.gap_hist) if snap else [],
        },
    }
    return out
