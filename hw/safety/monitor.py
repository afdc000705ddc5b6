"""The loop's per-sample checks, in the order the tick runs them (first fault wins).

Each check is a plain function over one sample, the command history and the thresholds
(:class:`~hw.safety.thresholds.Thresholds`), or a small class that holds only its own debounce
state. Each returns ``None`` (all well) or ``(Fault, detail)``; the loop trips that through
``Guard.trip`` and stops the tick. :data:`LIFT` in place of a fault code means contact lost (not a
fault: the loop's lift-off handling takes over). Nothing here allocates unless it reports.

Order in a tick (hw.control.loop ``_tick``): :func:`interlocks` (e-stop in every state; charger,
latch, lease, engine heartbeat, loop stall while active) -> sample -> :class:`Residual` (output
off) -> :func:`adc_saturated` -> :func:`overcurrent` -> :class:`AuxChannel` (reference / rail)
-> :class:`CurrentChannel` (stuck, frozen) -> output on only: :func:`dose` (net charge, output
time) -> :class:`Setpoint` (over the command) -> :class:`Contact` (open circuit, lift-off)
-> :class:`Impedance` (electrodes touching) -> :meth:`Contact.impedance_high` (lift-off).
"""

from __future__ import annotations

from hw.safety.faults import Fault
from hw.safety.thresholds import (
    ADC_CODE_MAX,
    FROZEN_TICKS,
    RAIL_TICKS,
    REF_TICKS,
    SETTLE_S,
    STUCK_TICKS,
    Thresholds,
)

LIFT = "lift"  # not a fault: contact lost (see hw.control.contact)

Report = tuple[Fault | str, str] | None


def interlocks(
    lines, active: bool, ramp_down: bool, now: float, lease_deadline, beat, gap: float, th
) -> Report:
    """The inputs that matter before any sample: the e-stop in every state; while the output is
    active the charger, the hardware latch, the lease, the engine's heartbeat and the tick gap. A
    ramp-down only goes toward zero by itself: it needs neither lease nor engine to finish."""
    if lines.estop_pin.state:  # normally-closed: high = pressed or wire broken
        return Fault.ESTOP, "e-stop button"
    if not active:
        return None
    if lines.charger_pin.state:
        return Fault.CHARGER, "charger detected during output"
    if lines.latch_pin.state:
        return Fault.HW_OVERCURRENT, "comparator latch set"
    if lease_deadline is not None and now > lease_deadline and not ramp_down:
        return Fault.LEASE_EXPIRED, f"lease {th.lease_s * 1000:.0f} ms not renewed"
    # A dead or stuck engine must not leave the output on (its decisions end a treatment).
    if beat is not None and now - beat > th.service_beat_max_s and not ramp_down:
        return Fault.INTERNAL, f"service heartbeat lost ({(now - beat) * 1000:.0f} ms)"
    if gap > th.stall_s:
        return Fault.LOOP_STALL, f"loop resumed after {gap * 1000:.1f} ms"
    return None


class Residual:
    """Current with the output off (or tripped): nothing may flow. Judged in time, not samples
    (the loop may tick slower while off). Raises the residual alarm, not a trip."""

    __slots__ = ("since_s",)

    def __init__(self) -> None:
        self.since_s: float | None = None

    def held(self, now: float, ai: float, th: Thresholds) -> bool:
        """Whether ``ai`` (|uA|) has been above the zero tolerance for ``th.resid_hold_s``."""
        if ai > th.zero_tol_ua:
            since = self.since_s
            if since is None:
                self.since_s = since = now
            return now - since >= th.resid_hold_s
        self.since_s = None
        return False


def adc_saturated(c0: int) -> Report:
    """The current channel at either end of the ADC's range: its value is unknown."""
    if c0 <= 0 or c0 >= ADC_CODE_MAX:
        return Fault.ADC_SATURATED, f"current channel code {c0}"
    return None


def overcurrent(i: float, ai: float, th: Thresholds) -> Report:
    """Absolute over-current, in any state, on one sample."""
    if ai > th.oc_ua:
        return Fault.OVERCURRENT, f"{i:.0f} uA measured, limit {th.oc_ua:.0f} uA"
    return None


class AuxChannel:
    """The ADC reference and the compliance rail, sampled on alternate ticks."""

    __slots__ = ("ref_n", "rail_n")

    def __init__(self) -> None:
        self.ref_n = self.rail_n = 0

    def check(self, is_ref: int, code: int, th: Thresholds) -> Report:
        if is_ref:
            if code < th.ref_lo_code or code > th.ref_hi_code:
                self.ref_n += 1
                if self.ref_n >= REF_TICKS:
                    return Fault.ADC_REFERENCE, f"reference code {code}"
            else:
                self.ref_n = 0
        elif code < th.rail_lo_code or code > th.rail_hi_code:
            self.rail_n += 1
            if self.rail_n >= RAIL_TICKS:
                return Fault.RAIL, f"rail code {code}"
        else:
            self.rail_n = 0
        return None


class CurrentChannel:
    """A current conversion that does not move although the command moved by a lot (a stuck
    ADC), or that does not move with the dither while driving (a frozen channel: DITHER_CODES)."""

    __slots__ = ("stuck_n", "same_n", "code_prev")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.stuck_n = 0
        self.same_n = 0
        self.code_prev = -1  # no conversion to compare with

    def check(self, c0: int, prev: float, prev2: float, dithered: bool, th: Thresholds) -> Report:
        """``prev``/``prev2``: the last two commands (uA); ``dithered``: driving with the dither."""
        if c0 == self.code_prev:
            d = prev - prev2
            if d >= th.follow_min_ua or d <= -th.follow_min_ua:
                self.stuck_n += 1
                if self.stuck_n >= STUCK_TICKS:
                    return Fault.ADC_STUCK, f"code {c0} unchanged while the command moved"
            if dithered:
                self.same_n += 1
                if self.same_n >= FROZEN_TICKS:
                    return (
                        Fault.ADC_STUCK,
                        f"current channel code {c0} unchanged for {self.same_n} samples",
                    )
            else:
                self.same_n = 0
        else:
            self.stuck_n = 0
            self.same_n = 0
        self.code_prev = c0
        return None


def dose(q_net_uc: float, active_s: float, max_output_s: float, th: Thresholds) -> Report:
    """The treatment's net charge and output time, after this sample's accounting."""
    if q_net_uc > th.q_max_uc or q_net_uc < -th.q_max_uc:
        return Fault.NET_CHARGE, f"net {q_net_uc:.1f} uC, limit {th.q_max_uc:.0f} uC"
    if active_s > max_output_s:
        return Fault.OUTPUT_TIME, f"{active_s:.0f} s of output"
    return None


class Setpoint:
    """The current stays within its last command, debounced ``n_oc`` ticks. Just after a command
    change the stage is still settling: the current may be anywhere between the old and the new
    command (late ticks caught up back to back sample early). An over-current is above both."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def check(
        self,
        now: float,
        i: float,
        prev: float,
        prev2: float,
        t_change: float,
        old_abs: float,
        what: str,
        state: str,
        th: Thresholds,
    ) -> Report:
        """``prev``/``prev2``: the last two commands (uA); ``t_change``: when the command last
        changed, from ``old_abs`` (|uA|); ``what``/``state``: for the detail only."""
        env = prev if prev >= 0 else -prev
        ai = i if i >= 0 else -i
        settling = now - t_change < SETTLE_S
        if settling and old_abs > env:
            env = old_abs
        tol = env * th.tol_frac
        allowed = env + (tol if tol > th.tol_ua else th.tol_ua)
        if ai > allowed or (prev * i < 0 and ai > th.tol_ua and not settling):
            self.n += 1
            if self.n >= th.n_oc:
                return (
                    Fault.OVERCURRENT_SETPOINT,
                    f"{i:.0f} uA measured for a {prev:.0f} uA {what} (the command before: "
                    f"{prev2:.0f} uA; {(now - t_change) * 1e3:.2f} ms since "
                    f"it changed from {old_abs:.0f} uA; state {state})",
                )
        else:
            self.n = 0
        return None


class Contact:
    """Under the command: an open circuit (below compliance) trips, a lift-off (at compliance)
    reports :data:`LIFT`; too high an impedance, or compliance-limited, is a lift-off too."""

    __slots__ = ("follow_n", "lift_n", "zhi_n")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.follow_n = self.lift_n = self.zhi_n = 0

    def follow(
        self,
        since_change_s: float,
        i: float,
        ai: float,
        prev: float,
        aprev: float,
        v: float,
        av: float,
        th: Thresholds,
    ) -> Report:
        # Judged in time, not in ticks: a sample within the stage's settling time of a command
        # change says nothing about the contact (neither counts toward nor clears the debounces).
        if since_change_s < SETTLE_S:
            return None
        if aprev >= th.follow_min_ua and ai < th.follow_ratio * aprev:
            if av >= th.v_comp_v:
                self.lift_n += 1
                self.follow_n = 0
                if self.lift_n >= th.n_lift:
                    return LIFT, "open load at compliance"
            else:
                self.follow_n += 1
                self.lift_n = 0
                if self.follow_n >= th.n_follow:
                    return (
                        Fault.OPEN_CIRCUIT,
                        f"{i:.1f} uA for a {prev:.0f} uA command at {v:.2f} V",
                    )
        else:
            self.lift_n = self.follow_n = 0
        return None

    def impedance_high(self, aprev: float, av: float, z_ohm, th: Thresholds) -> Report:
        """Compliance-limited or poor contact (``z_ohm`` the smoothed impedance, or None)."""
        if aprev >= th.follow_min_ua and (
            av >= th.v_comp_v or (z_ohm is not None and z_ohm > th.z_max_ohm)
        ):
            self.zhi_n += 1
            if self.zhi_n >= th.n_z:
                return LIFT, "impedance above limit"
        else:
            self.zhi_n = 0
        return None


class Impedance:
    """The contact impedance from settled samples: a smoothed value (``ema_ohm``, shown) and the
    mean of the last 16, on which electrodes touching (below ``z_min_ohm``) trips. At 100 uA a
    150 ohm short is 15 mV, about one code of the electrode-voltage channel, so single samples are
    mostly noise; 16 of them average it 4x and forget in 8 ms."""

    __slots__ = ("ema_ohm", "buf", "k", "count", "total", "lo_n")

    def __init__(self) -> None:
        self.ema_ohm: float | None = None
        self.buf = [0.0] * 16
        self.k = 0
        self.count = 0
        self.total = 0.0
        self.lo_n = 0

    def sample(self, z: float, th: Thresholds) -> Report:
        """One settled sample's impedance ``z`` (ohm)."""
        ze = self.ema_ohm
        self.ema_ohm = z if ze is None else ze + 0.05 * (z - ze)
        zb = self.buf
        k = self.k
        self.total += z - zb[k]
        zb[k] = z
        self.k = (k + 1) & 15
        if self.count < 16:
            self.count += 1
        elif self.total < 16.0 * th.z_min_ohm:
            self.lo_n += 1
            if self.lo_n >= th.n_zlo:
                return Fault.IMPEDANCE_LOW, f"{self.total / 16:.0f} ohm (mean of 16)"
        else:
            self.lo_n = 0
        return None
