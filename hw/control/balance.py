"""Charge balance after a lift-off: the net charge the lift left is returned, closed on the
*measured* net charge, before the amplitude ramps up again from zero."""

from __future__ import annotations

from hw.control.state import OutputState
from hw.safety.thresholds import BALANCE_EPS_UC


class ChargeBalance:
    """Methods of :class:`~hw.control.loop.ControlLoop` (a mixin: the state is the loop's)."""

    def _begin_balance(self) -> None:
        """Return the net charge a lift-off left (measured, not assumed) before treating on."""
        self.state = OutputState.BALANCE
        self._bal_sign = -1.0 if self.q_net_uc > 0 else 1.0
        self.amplitude_ua = 0.0
        self._event("balance", net_charge_uc=round(self.q_net_uc, 2))

    def _drive_balance(self) -> bool:
        """A ramp of one polarity, up at the start ramp's slew rate and down so that it ends as the
        measured net charge reaches zero (a triangle, or a trapezoid capped at the target)."""
        dt = self.tick_s
        s = self._bal_sign
        left_uc = -s * self.q_net_uc  # what is still to return, in the ramp's own polarity
        amp = self.amplitude_ua
        slew = self._slew_up
        if left_uc <= BALANCE_EPS_UC:
            return self._end_balance()
        # Charge a ramp down from amp carries: amp^2 / (2 slew); ramp up while it is not enough.
        cap = max(self.th.follow_min_ua, min(self.target_ua, self.cfg.limits.level_max_ua))
        if amp * amp / (2.0 * slew) < left_uc and amp < cap:
            amp = min(cap, amp + slew * dt)
        elif amp * amp / (2.0 * slew) >= left_uc:
            amp = max(0.0, amp - slew * dt)
        if amp <= 0.0:
            return self._end_balance()
        self.amplitude_ua = amp
        return self._write(s * amp, True)

    def _end_balance(self) -> bool:
        self.amplitude_ua = 0.0
        self._q_closed_uc = self.q_net_uc
        self.wave.restart()
        self.state = OutputState.RAMP_UP
        self._event("balanced", net_charge_uc=round(self.q_net_uc, 2))
        return self._write(0.0, True)
