"""Test doubles for the kiosk: a link that records requests and lets the test answer them."""

from __future__ import annotations

from kiosk.link import Reply
from kiosk.shots_data import status  # noqa: F401  (the tests' status events)


class FakeLink:
    """Records every request; ``answer`` / ``fail`` complete them like the real link would
    (the callback runs at once: the test plays the UI thread)."""

    def __init__(self):
        self.sent: list[Reply] = []
        self.args: list[dict | None] = []

    def request(self, cmd, args=None, *, callback=None, timeout_s=3.0):
        r = Reply(cmd, timeout_s, callback)
        self.sent.append(r)
        self.args.append(args)
        return r

    def cmds(self) -> list[str]:
        return [r.cmd for r in self.sent]

    def pending(self, cmd: str) -> list[Reply]:
        return [r for r in self.sent if r.cmd == cmd and not r.done.is_set()]

    def _complete(self, r: Reply, ok, result, error):
        r.ok, r.result, r.error = ok, result, error
        r.done.set()
        if r.callback:
            r.callback(r)

    def answer(self, cmd: str, result) -> int:
        """Answer every pending ``cmd`` with ``result``; returns how many."""
        rs = self.pending(cmd)
        for r in rs:
            self._complete(r, True, result, None)
        return len(rs)

    def fail(self, cmd: str, code: str, message: str = "") -> int:
        rs = self.pending(cmd)
        for r in rs:
            self._complete(r, False, None, {"code": code, "message": message})
        return len(rs)


RUNNING = dict(
    state="running",
    output="on",
    program="demo",
    program_name="Demo",
    step=0,
    steps=2,
    zone="cheeks",
    motion="glide",
    text="Glide from beside the nose out towards the ear.",
    step_left_s=7.4,
    total_left_s=15.4,
    level=3,
    level_max=4,
    setpoint_ua=120.0,
    measured_ua=119.0,
    impedance_ohm=15948.0,
    contact=True,
    contact_quality_pct=100.0,
    lease_holder="kiosk",
)

SUMMARY = {
    "active_s": 16.0,
    "charge_uc": 1234.5,
    "net_dc_charge_uc": 0.4,
    "mean_current_ua": 77.2,
    "peak_current_ua": 160.3,
    "contact_quality_pct": 96.0,
    "program": "demo",
    "end_reason": "finished",
    "treatment_id": 3,
    "zones": {
        "cheeks": {
            "active_s": 8.0,
            "charge_uc": 600.0,
            "mean_current_ua": 75.0,
            "peak_current_ua": 150.0,
            "contact_quality_pct": 95.0,
        },
        "forehead": {
            "active_s": 8.0,
            "charge_uc": 634.5,
            "mean_current_ua": 79.4,
            "peak_current_ua": 160.3,
            "contact_quality_pct": 97.0,
        },
    },
}

PROGRAMS = {
    "programs": [
        {
            "id": "full-face-lift",
            "name": "Full-face lift",
            "description": "About ten minutes.",
            "duration_s": 600,
            "steps": [
                {"zone": z, "motion": "glide", "duration_s": 120, "max_level": 8, "text": "t"}
                for z in ("forehead", "brows", "cheeks", "jawline", "neck")
            ],
        },
        {
            "id": "quick-tone",
            "name": "Quick tone",
            "description": "Five minutes.",
            "duration_s": 300,
            "steps": [
                {"zone": z, "motion": "glide", "duration_s": 100, "max_level": 7, "text": "t"}
                for z in ("cheeks", "jawline", "forehead")
            ],
        },
        {
            "id": "demo",
            "name": "Demo",
            "description": "A 16-second tour.",
            "duration_s": 16,
            "steps": [
                {"zone": "cheeks", "motion": "glide", "duration_s": 8, "max_level": 4, "text": "t"},
                {
                    "zone": "forehead",
                    "motion": "hold",
                    "duration_s": 8,
                    "max_level": 4,
                    "text": "t",
                },
            ],
        },
    ]
}

HELLO = {
    "protocol": 1,
    "daemon": "microcurrent-kiosk hw",
    "sim": True,
    "lease_ms": 300.0,
    "level_count": 10,
}
