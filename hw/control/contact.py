"""Contact loss and re-contact (lift-off is not a fault).

A lift-off (hw.safety.monitor reports LIFT) drops the current to zero at once (the DAC; the relay
stays closed, as in a waveform's rest, so probing never cycles it), the waveform and timers pause,
short probe bursts of ``probe_current_ua`` look for the skin again, and after ``recontact_ms`` of
good contact the charge the lift left unbalanced is returned (hw.control.balance) before the
amplitude ramps up from zero. Lifted longer than ``lifted_max_s``, the output is cut (relay open)
and stays off: only a new start brings it back."""

from __future__ import annotations

from hw.control.state import OutputState
from hw.control.waveform import Waveform
from hw.safety.thresholds import BALANCE_EPS_UC


class LiftOff:
    """Methods of :class:`~hw.control.loop.ControlLoop` (a mixin: the state is the loop's)."""

    def _lift(self, now: float, why: str) -> None:
        """Contact lost: current to zero now (DAC; the relay stays closed, kicked, so probing
        never cycles it), timers pause, and probe bursts look for skin."""
        if self.state == OutputState.RAMP_DOWN:
            # Stopping anyway: contact lost just ends the stop. Never resume toward the old level.
            self._output_off("stopped (contact lost)")
            return
        self._write(0.0, False)
        self.state = OutputState.LIFTED
        self.contact = False
        self.amplitude_ua = 0.0
        self.wave.restart()  # the open pair's charge is in q_net: balanced at re-contact
        self._pending_wave_apply()
        self._lifted_since = now
        self._next_probe = now + self._probe_interval_s
        self._probe_left = 0
        self._good_since = None
        self._contact.reset()
        self._imp.lo_n = 0
        self._setpoint.n = 0
        self._event("contact_lost", reason=why)

    def _pending_wave_apply(self) -> None:
        if self._pending_wave is not None:
            first = self.wave.first
            self.wave = Waveform(self._pending_wave, self.tick_s)
            self.wave.first = first
            self._pending_wave = None

    def _lifted_tick(self, now: float, i: float, v: float) -> bool:
        # The relay is closed: the DAC's zero (and each probe) is checked like any command.
        if self._over_setpoint(now, i, "probe" if self._probe_left else "zero while lifted"):
            return False
        if self._probe_left == 0:
            if now - self._lifted_since >= self.th.lifted_max_s:
                self._output_off("contact lost for too long")
                self._event("lift_timeout", lifted_s=round(now - self._lifted_since, 3))
                return True
            if now < self._next_probe:
                return self._write(0.0, False)
            # Start a probe burst: a small current, alternating polarity burst to burst.
            self._probe_left = self._probe_ticks
            self._probe_good = self._probe_bad = 0
            self._probe_sign = -self._probe_sign
            return self._write(self._probe_sign * self._probe_ua, False)
        # Judge the settled samples for contact.
        self._probe_left -= 1
        if self._probe_left < self._probe_ticks - 2:
            ok = abs(i) >= 0.6 * self._probe_ua and abs(v) < self.th.v_comp_v
            if ok:
                self._probe_good += 1
            else:
                self._probe_bad += 1
        if self._probe_left > 0:
            return self._write(self._probe_sign * self._probe_ua, False)
        # Burst over: back to zero and decide.
        if not self._write(0.0, False):
            return False
        self._next_probe = now + self._probe_interval_s
        if self._probe_good and not self._probe_bad:
            if self._good_since is None:
                self._good_since = now
            if now - self._good_since >= self._recontact_s:
                self._resume(now)
        else:
            self._good_since = None
        return True

    def _resume(self, now: float) -> None:
        """Skin found again: return the unbalanced charge, then ramp from zero (no sting)."""
        self.contact = True
        self.amplitude_ua = 0.0
        self._imp.ema_ohm = None
        self._event("contact_restored", lifted_s=round(now - self._lifted_since, 3))
        if abs(self.q_net_uc) > BALANCE_EPS_UC:
            self._begin_balance()
        else:
            self.state = OutputState.RAMP_UP
