"""Crash-test writer: hammer a History at argv[1] until killed.

Each line on stdout is printed (and flushed) only after the write it reports has committed:

    BEGUN <treatment_id>
    CHECKPOINT <treatment_id> <step>
    COMMITTED treatment <treatment_id> <charge_uc> <active_s> <end_reason>
    EVENT <event_id> <treatment_id>

The figures are a pure function of (treatment_id, step), see figures(), so the test can check
every stored number exactly. Run with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hw.history import History, TreatmentSummary, ZoneSummary

CHECKPOINTS = 4  # checkpoints per treatment; figures(tid, CHECKPOINTS) are the final ones
ZONES = ("cheeks", "forehead", "jawline")


def figures(treatment_id: int, step: int) -> tuple[TreatmentSummary, list[ZoneSummary]]:
    """Dose after `step` checkpoints: zones only get added and every cumulative figure grows
    with `step`; awkward floats on purpose, to prove they are stored exactly."""
    zones = [
        ZoneSummary(
            zone=name,
            active_s=step * (10.0 + i) / 3,
            charge_uc=step * (treatment_id * 0.1 + i + 1) / 7,
            mean_current_ua=100.0 + treatment_id % 13 + i / 3,
            peak_current_ua=200.0 + step + i,
            contact_quality_pct=(50 + treatment_id * 7 + i) % 101,
        )
        for i, name in enumerate(ZONES[: min(step, len(ZONES))])
    ]
    summary = TreatmentSummary(
        active_s=sum(z.active_s for z in zones),
        charge_uc=step * (treatment_id * 0.1 + 1) * 3 / 7 + step * 1e-9,
        net_dc_charge_uc=(-1) ** treatment_id * step * 0.013,
        mean_current_ua=100.0 + treatment_id % 13,
        peak_current_ua=200.0 + step,
        contact_quality_pct=(50 + treatment_id * 7) % 101,
    )
    return summary, zones


def end_reason(treatment_id: int) -> str:
    return ("finished", "stopped", "fault", "estop")[treatment_id % 4]


def main(path: str) -> None:
    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with History(Path(path)) as history:
        while True:
            tid = history.begin_treatment("demo", "Demo")
            say(f"BEGUN {tid}")
            for step in range(1, CHECKPOINTS):
                history.checkpoint_treatment(tid, *figures(tid, step))
                say(f"CHECKPOINT {tid} {step}")
            summary, zones = figures(tid, CHECKPOINTS)
            reason = end_reason(tid)
            history.finish_treatment(
                tid, reason, summary, zones, fault_code="E_TEST" if reason == "fault" else None
            )
            say(f"COMMITTED treatment {tid} {summary.charge_uc!r} {summary.active_s!r} {reason}")
            event_id = history.record_event("info", "TEST_EVENT", f"after {tid}", treatment_id=tid)
            say(f"EVENT {event_id} {tid}")


if __name__ == "__main__":
    main(sys.argv[1])
