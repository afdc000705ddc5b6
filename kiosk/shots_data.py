"""The scripted data the screenshots, the scripted kiosk bench and the tests' fakes fill the
view-model with: a hello, status events (docs/protocol.md) with idle defaults, a running
treatment, programs, history rows, a summary and a fault, and a link that never answers."""

from __future__ import annotations

HELLO = {"protocol": 1, "sim": True, "lease_ms": 300.0, "level_count": 10}
NOW_S = (
    1_796_000_000.0 + 3 * 86400 + 12 * 3600
)  # a Thursday, 12:53 UTC  # a fixed "now" for the home and history figures


def status(**kw) -> dict:
    """A status event's data (docs/protocol.md) with idle defaults, ``kw`` over them."""
    st = {
        "state": "ready",
        "output": "off",
        "program": None,
        "program_name": None,
        "step": None,
        "steps": None,
        "zone": None,
        "motion": None,
        "text": None,
        "step_left_s": None,
        "total_left_s": None,
        "level": None,
        "level_max": None,
        "setpoint_ua": 0.0,
        "measured_ua": 0.0,
        "impedance_ohm": None,
        "contact": False,
        "contact_quality_pct": 0.0,
        "charge_uc": 0.0,
        "net_dc_charge_uc": 0.0,
        "fault": None,
        "post": {"valid": True, "passed": True, "failed_step": None},
        "last_summary": None,
        "lease_holder": None,
    }
    st.update(kw)
    return st


RUN = dict(
    state="running",
    output="on",
    program="full-face-lift",
    program_name="Full-face lift",
    step=2,
    steps=5,
    zone="cheeks",
    motion="glide",
    text="Glide from beside the nose out towards the ear, one side then the other.",
    step_left_s=83.2,
    total_left_s=391.0,
    level=4,
    level_max=8,
    contact=True,
    contact_quality_pct=92.0,
    measured_ua=160.0,
)
PROGRAMS = [
    {
        "id": "full-face-lift",
        "name": "Full-face lift",
        "duration_s": 600,
        "steps": [{"zone": z} for z in ("forehead", "brows", "cheeks", "jawline", "neck")],
    },
    {
        "id": "quick-tone",
        "name": "Quick tone",
        "duration_s": 300,
        "steps": [{"zone": z} for z in ("cheeks", "jawline", "forehead")],
    },
    {
        "id": "demo",
        "name": "Demo",
        "duration_s": 16,
        "steps": [{"zone": "cheeks"}, {"zone": "forehead"}],
    },
]
HISTORY = [
    {
        "id": 9 - i,
        "program_name": "Full-face lift" if i % 2 else "Quick tone",
        "started_at": NOW_S - i * 86400 - 3600,
        "active_s": 600 - 300 * (i % 2 == 0),
        "end_reason": "finished" if i != 2 else "stopped",
        "zones": [],
    }
    for i in range(6)
]
SUMMARY = {
    "active_s": 598.0,
    "charge_uc": 71230.0,
    "net_dc_charge_uc": 0.6,
    "mean_current_ua": 119.1,
    "peak_current_ua": 204.0,
    "contact_quality_pct": 94.0,
    "end_reason": "finished",
    "program": "full-face-lift",
    "zones": {
        z: {"active_s": s}
        for z, s in (
            ("forehead", 120),
            ("brows", 90),
            ("cheeks", 150),
            ("jawline", 118),
            ("neck", 120),
        )
    },
}
FAULT = {
    "code": "ESTOP",
    "message": "The stop button was pressed.",
    "action": "Release the stop button, then acknowledge.",
    "detail": "e-stop from panel",
}


class NullLink:
    """Accepts requests (recorded in ``sent``) and never answers: the script sets the
    view-model's state itself."""

    def __init__(self):
        self.sent: list[str] = []

    def request(self, cmd, args=None, *, callback=None, timeout_s=3.0):
        from kiosk.link import Reply

        self.sent.append(cmd)
        return Reply(cmd, timeout_s, None)


# The service area's service_info, as the daemon on the simulated board answered it (steps whole,
# limits cut to a few; one set by a site file).
_DEFAULTS = "/opt/microcurrent-kiosk/hw/default.yaml"
SERVICE_INFO = {
    "post": {
        "passed": True,
        "failed_step": None,
        "reason": "",
        "steps": [
            {"step": "reference", "reference_code": 3102.75, "rail_v": 14.995},
            {"step": "zero", "offset_codes": 1.625},
            {"step": "latch_rearm"},
            {
                "step": "calibration",
                "plus_ua": 208.893,
                "minus_ua": -203.362,
                "gain": 1.031,
                "offset_ua": 2.766,
                "ohm_ua": 206.091,
            },
            {"step": "latch_trip", "current_after_ua": 0.229},
            {"step": "deadman", "before_ua": 199.966, "after_ua": -0.229},
            {"step": "dac_shutdown", "before_ua": 199.966, "after_ua": 0.076},
            {"step": "relay", "before_ua": 199.814, "leak_ua": 0.229},
            {"step": "estop_interlock", "before_ua": 199.356, "after_ua": 0.076, "again_ua": 200.3},
            {"step": "charger_interlock", "before_ua": 199.9, "after_ua": 0.2, "again_ua": 199.8},
        ],
    },
    "post_valid": True,
    "limits": [
        {"key": "limits.max_current_ua", "value": 400.0, "file": _DEFAULTS},
        {"key": "limits.overcurrent_trip_ua", "value": 480.0, "file": _DEFAULTS},
        {"key": "limits.hw_overcurrent_ua", "value": 560.0, "file": _DEFAULTS},
        {"key": "limits.daily_max_s", "value": 1800.0, "file": _DEFAULTS},
        {"key": "limits.lease_ms", "value": 250.0, "file": "/etc/microcurrent-kiosk/site.yaml"},
    ],
    "versions": {"hw": "0.1.0", "protocol": 1, "python": "3.11.7", "platform": "Linux aarch64"},
    "realtime": {"process": "separate", "pid": 812, "scheduling": "cpu 3, SCHED_FIFO 20"},
    "sim": True,
}
