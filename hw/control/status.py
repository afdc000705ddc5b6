"""The loop's published status: one :class:`~hw.control.state.Snapshot` every SNAPSHOT_EVERY
ticks, built on the real-time thread from plain arithmetic and one tuple."""

from __future__ import annotations

import math

from hw.control.state import DRIVING, Snapshot


class Status:
    """Methods of :class:`~hw.control.loop.ControlLoop` (a mixin: the state is the loop's)."""

    def _publish(self, now: float) -> None:
        # On the real-time thread every SNAPSHOT_EVERY ticks: kept to plain arithmetic and one
        # tuple (the fault and alarm dicts are built once per fault, not per snapshot).
        if self._meas_n:
            self.measured_ua = self._meas_acc / self._meas_n
            self._meas_acc = 0.0
            self._meas_n = 0
        elif self.state not in DRIVING:
            self.measured_ua = 0.0
        lease_left = None
        if self.lease_deadline is not None:
            lease_left = (self.lease_deadline - now) * 1000.0
            if lease_left < 0.0:
                lease_left = 0.0
        z = self.impedance_ohm
        if not self.contact:
            quality = 0.0
        elif z is None:
            quality = 100.0 if self.state in DRIVING else 0.0
        else:
            # 100 % up to 20 kOhm (gelled skin), falling on a log scale to 0 % at max_impedance_ohm.
            q = (self._q_log_hi - math.log(z if z > 1.0 else 1.0)) * self._q_log_scale
            quality = 100.0 if q >= 1.0 else 0.0 if q <= 0.0 else 100.0 * q
        g = self.guard
        fault, alarm = g.fault, g.alarm
        if fault is not self._fault_seen:
            self._fault_seen, self._fault_dict = fault, fault.as_dict() if fault else None
        if alarm is not self._alarm_seen:
            self._alarm_seen, self._alarm_dict = alarm, alarm.as_dict() if alarm else None
        self.snapshot = Snapshot(
            now,
            self.state,
            self.target_ua,
            self.amplitude_ua,
            self.measured_ua,
            z,
            quality,
            self.contact,
            self.q_abs_uc,
            self.q_net_uc,
            self.peak_ua,
            self.active_s,
            lease_left,
            g.post_valid,
            self._fault_dict,
            self.residual_ua,
            self._alarm_dict,
            self.ticks,
            self.overruns,
            self.gap_max_s * 1e3,
            self.runner_hists[0].counts if self.runner_hists else (),
            self.runner_hists[1].counts if self.runner_hists else (),
        )
