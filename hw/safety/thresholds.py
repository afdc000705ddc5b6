"""Every threshold the loop's per-sample checks (hw.safety.monitor) use, in one place.

Built once from the validated config (``limits``, ``hardware.front_end``, ``loop``) and the loop's
tick, off the real-time path; the checks read plain attributes. Each line says why the value is
what it is. Debounces are in ticks (``n_*``, at least 1) where the check is judged per sample and
in seconds (``*_s``) where it is judged in time (the loop may tick slower while the output is off,
and catches up late ticks back to back).
"""

from __future__ import annotations

import math

from hw.config import Config

SETTLE_S = 0.0003  # the output stage settles well within this after a step (tau ~ 60 us)
# A live current channel moves with a +/-4 code dither (~ +/-2 uA: 6 ADC codes peak to peak);
# 16 identical conversions in a row (8 ms at 2 kHz) while driving is a frozen channel.
DITHER_CODES = 4
FROZEN_TICKS = 16
BALANCE_EPS_UC = 0.5  # net charge small enough to call balanced (0.2 % of a 250 uC bound)
RESIDUAL_MS = 5.0  # debounce of the residual-current check (off or tripped)
RESHUTDOWN_MS = 100.0  # while tripped, the SPI shutdown of the DAC is re-issued this often
IDLE_PERIOD_MS = 20.0  # the loop's pace with the output off and nothing flowing (idle_period_s)
ADC_CODE_MAX = 4095  # a 12-bit conversion at either rail is saturated: its value is unknown
REF_TICKS = 2  # reference out of range on 2 of its samples in a row (sampled every other tick)
RAIL_TICKS = 3  # rail out of range on 3 of its samples in a row (sampled every other tick)
STUCK_TICKS = 2  # the current code unchanged twice while the command moved by follow_min_ua


def ticks(ms: float, tick_s: float) -> int:
    """A debounce of ``ms`` milliseconds as a whole number of ticks (at least 1, rounded up)."""
    return max(1, math.ceil(ms * 1e-3 / tick_s - 1e-9))


class Thresholds:
    """The checks' limits, from ``cfg`` at a tick of ``tick_s`` seconds. Read-only after init."""

    __slots__ = (
        "tick_s",
        "oc_ua",
        "tol_frac",
        "tol_ua",
        "n_oc",
        "follow_ratio",
        "follow_min_ua",
        "n_follow",
        "n_lift",
        "v_comp_v",
        "z_min_ohm",
        "z_max_ohm",
        "n_z",
        "n_zlo",
        "z_settle_s",
        "q_max_uc",
        "zero_tol_ua",
        "resid_hold_s",
        "reshut_s",
        "lifted_max_s",
        "rail_lo_code",
        "rail_hi_code",
        "ref_lo_code",
        "ref_hi_code",
        "lease_s",
        "service_beat_max_s",
        "stall_s",
    )

    def __init__(self, cfg: Config, tick_s: float):
        lim, fe = cfg.limits, cfg.hardware.front_end
        ts = self.tick_s = tick_s
        # Absolute over-current: above it one sample trips (the hardware latch sits higher).
        self.oc_ua = lim.overcurrent_trip_ua
        # Over the command: allowed = |cmd| + max(|cmd| x tol_frac, tol_ua), debounced n_oc ticks.
        self.tol_frac = lim.setpoint_tolerance_pct / 100.0
        self.tol_ua = lim.setpoint_tolerance_ua
        self.n_oc = ticks(lim.overcurrent_debounce_ms, ts)
        # Under the command: |I| < follow_ratio x |cmd| for a command of at least follow_min_ua is
        # an open circuit (below compliance) or a lift-off (at compliance).
        self.follow_ratio = lim.follow_ratio
        self.follow_min_ua = lim.follow_min_ua
        self.n_follow = ticks(lim.follow_debounce_ms, ts)
        self.n_lift = ticks(lim.lift_debounce_ms, ts)
        # The electrode voltage counts as at compliance from 90 % of the rail's reach.
        self.v_comp_v = 0.9 * fe.compliance_v
        # Contact impedance: below z_min the electrodes touch (on the mean of 16 settled samples,
        # which already averages, so a quarter of the debounce); above z_max too little skin.
        self.z_min_ohm, self.z_max_ohm = lim.min_impedance_ohm, lim.max_impedance_ohm
        self.n_z = ticks(lim.impedance_debounce_ms, ts)
        self.n_zlo = max(2, self.n_z // 4)
        self.z_settle_s = 2 * ts - 1e-9  # the skin's RC: as long as two ticks at the loop's rate
        # Net (DC) charge of a treatment: above it the skin sees electrolysis.
        self.q_max_uc = lim.max_net_charge_uc
        # Nothing may flow with the output off: the self-test's zero tolerance, held resid_hold_s.
        self.zero_tol_ua = cfg.hardware.post.zero_tolerance_ua
        self.resid_hold_s = (ticks(RESIDUAL_MS, ts) - 1) * ts - 1e-9
        self.reshut_s = RESHUTDOWN_MS / 1000.0
        # Lifted longer than this, the output is cut and stays off.
        self.lifted_max_s = lim.lifted_max_s
        # The compliance rail within rail_tolerance_pct of nominal, as ADC codes.
        rail_tol = fe.rail_nominal_v * fe.rail_tolerance_pct / 100.0
        self.rail_lo_code = (fe.rail_nominal_v - rail_tol) / fe.rail_v_per_code
        self.rail_hi_code = (fe.rail_nominal_v + rail_tol) / fe.rail_v_per_code
        # The ADC's reference channel within its tolerance: else every conversion is off-scale.
        self.ref_lo_code = fe.reference_code - fe.reference_tolerance_codes
        self.ref_hi_code = fe.reference_code + fe.reference_tolerance_codes
        # The kiosk's lease on the output; the engine's heartbeat bound (never above the lease).
        self.lease_s = lim.lease_ms / 1000.0
        self.service_beat_max_s = min(cfg.loop.service_heartbeat_ms / 1000.0, self.lease_s)
        # A gap between two ticks longer than this while active: the checks were blind.
        self.stall_s = cfg.loop.stall_ms / 1000.0
