"""One treatment's record in the engine: where it is in its program, and the dose per zone.

The dose comes from the loop's snapshots (charge, net DC charge, output time, peak current,
contact quality), added per zone as the treatment goes; :func:`summarize` gives the figures the
history stores and the ``treatment_finished`` event carries (docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hw.config import Program, Step
from hw.control.loop import OutputState, Snapshot

ZERO_SUMMARY = {
    "active_s": 0.0,
    "charge_uc": 0.0,
    "net_dc_charge_uc": 0.0,
    "mean_current_ua": 0.0,
    "peak_current_ua": 0.0,
    "contact_quality_pct": 0.0,
}


@dataclass
class ZoneDose:
    active_s: float = 0.0
    charge_uc: float = 0.0
    net_uc: float = 0.0
    peak_ua: float = 0.0
    quality_sum: float = 0.0
    quality_n: int = 0

    def as_dict(self) -> dict:
        return {
            "active_s": self.active_s,
            "charge_uc": self.charge_uc,
            "mean_current_ua": self.charge_uc / self.active_s if self.active_s > 0 else 0.0,
            "peak_current_ua": self.peak_ua,
            "contact_quality_pct": self.quality_sum / self.quality_n if self.quality_n else 0.0,
        }


@dataclass
class Treatment:
    program: Program
    level: int  # the level the person asked for (capped per step)
    max_active_s: float
    treatment_id: int | None
    step_index: int = 0
    step_elapsed_s: float = 0.0
    active_s: float = 0.0
    next_cue_s: float = 0.0
    contact_good_s: float = 0.0
    started_ramp: bool = False
    zones: dict[str, ZoneDose] = field(default_factory=dict)
    last_checkpoint_s: float = 0.0
    end_reason: str = "finished"
    end_code: str | None = None  # a fault code of the engine's own (RECORD_FAILED)

    @property
    def step(self) -> Step:
        return self.program.steps[self.step_index]

    @property
    def total_left_s(self) -> float:
        rest = sum(s.duration_s for s in self.program.steps[self.step_index + 1 :])
        return max(0.0, self.step.duration_s - self.step_elapsed_s) + rest


def z_total(tr: Treatment) -> float:
    """The treatment's real output time so far (s), as the history adds it up."""
    return sum(z.active_s for z in tr.zones.values())


def zones_dict(tr: Treatment) -> dict:
    """Per zone: its figures (ZoneDose.as_dict)."""
    return {name: z.as_dict() for name, z in tr.zones.items()}


def add_dose(tr: Treatment, last: Snapshot, snap: Snapshot) -> float:
    """Add what the loop delivered between two of its snapshots to the current step's zone;
    return the output time (s) between them."""
    z = tr.zones.setdefault(tr.step.zone, ZoneDose())
    dq = max(0.0, snap.charge_uc - last.charge_uc)
    z.charge_uc += dq
    z.net_uc += snap.net_charge_uc - last.net_charge_uc
    out_s = max(0.0, snap.active_s - last.active_s)
    z.active_s += out_s
    z.peak_ua = max(z.peak_ua, snap.peak_ua if dq else 0.0)
    if snap.state in (OutputState.ON, OutputState.RAMP_UP):
        z.quality_sum += snap.contact_quality_pct
        z.quality_n += 1
    return out_s


def summarize(tr: Treatment, snap: Snapshot | None) -> dict:
    """The treatment's figures so far: output time (s), charge (uC), the loop's net DC charge (uC),
    mean and peak current (uA), mean contact quality (%)."""
    active = sum(z.active_s for z in tr.zones.values())
    charge = sum(z.charge_uc for z in tr.zones.values())
    qn = sum(z.quality_n for z in tr.zones.values())
    return {
        "active_s": active,
        "charge_uc": charge,
        "net_dc_charge_uc": snap.net_charge_uc if snap else 0.0,
        "mean_current_ua": charge / active if active > 0 else 0.0,
        "peak_current_ua": max((z.peak_ua for z in tr.zones.values()), default=0.0),
        "contact_quality_pct": (sum(z.quality_sum for z in tr.zones.values()) / qn if qn else 0.0),
    }
