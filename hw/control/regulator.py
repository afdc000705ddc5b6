"""The regulator: from the ramped amplitude and the waveform to the DAC A code of each tick.

The command is waveform x amplitude (slewed at the ramp rate), plus a trim that drains the net
charge of closed pairs; it goes to the DAC through the self-test's calibration and a per-polarity
gain learnt on settled samples. While driving the code carries a small alternating dither
(+/- ``DITHER_CODES``, about 2 uA, charge-balanced tick by tick): a live current channel sees it in
every sample, so a current channel frozen alone is caught within ``FROZEN_TICKS``
(hw.safety.monitor) whatever the waveform.
Every write is noted as the command history the checks judge the next sample against.
"""

from __future__ import annotations

from hw.control.state import OutputState
from hw.control.waveform import Waveform


class Regulator:
    """Methods of :class:`~hw.control.loop.ControlLoop` (a mixin: the state is the loop's)."""

    def _to_code(self, ua: float) -> int:
        """DAC A code for a wanted true current, through the self-test calibration."""
        nominal = (ua - self.cal_offset_ua) / self.cal_gain
        code = round(nominal / self._dac_ua)
        if code > self._max_codes:
            code = self._max_codes
        elif code < -self._max_codes:
            code = -self._max_codes
        return self._dac_zero + code

    def _note_command(self, now: float, cmd: float) -> None:
        old = self._cmd_prev
        d = cmd - old
        if d > 1.0 or d < -1.0:
            self._t_cmd_change = now
            self._cmd_old_abs = old if old >= 0 else -old
        self._cmd_prev2, self._cmd_prev = old, cmd

    def _write(self, cmd_ua: float, dither: bool) -> bool:
        """Write DAC A for ``cmd_ua`` (true uA, through the calibration and learned gain), with the
        tick's dither when driving. False when a trip from another thread won the race."""
        if cmd_ua:
            code = self._to_code(cmd_ua * self._g[1.0 if cmd_ua > 0 else -1.0])
        else:
            code = self._to_code(0.0)
        if dither:
            self._dither = -self._dither
            code += self._dither
        b = self.board
        with b.bus_lock:
            if self.guard.tripped:  # stay at zero
                return False
            b.dac.write_a(code)
        self._cmd_dithered = dither
        # The settling window starts when the DAC really changed, not when the tick began (a
        # thread descheduled mid-tick writes late).
        self._note_command(self.clock.now(), cmd_ua)
        return True

    def _drive(self, now: float) -> bool:
        dt = self.tick_s
        state = self.state
        amp, target = self.amplitude_ua, self.target_ua
        if state == OutputState.RAMP_DOWN:
            return self._drive_stop()
        if state == OutputState.BALANCE:
            return self._drive_balance()
        if amp < target:
            amp = min(target, amp + self._slew_up * dt)
        elif amp > target:
            amp = max(target, amp - self._slew_up * dt)
        if state == OutputState.RAMP_UP and amp == target:
            self.state = OutputState.ON
        self.amplitude_ua = amp
        wave = self.wave
        out, pair_end = wave.step(amp)
        if out:
            # Drain the net charge of closed pairs (a ramp-down, stage offset) slowly and within
            # 5 %; the charge of the pair still open is not an error and is not trimmed.
            trim = -self._q_closed_uc / 2.0
            lim = 0.05 * amp
            trim = lim if trim > lim else -lim if trim < -lim else trim
            cmd = out + trim
        else:
            cmd = 0.0
        if not self._write(cmd, True):
            return False
        if pair_end:
            self._q_closed_uc = self.q_net_uc
        if pair_end and self._pending_wave is not None:
            self.wave = Waveform(self._pending_wave, self.tick_s)
            self.wave.first = wave.first
            self._pending_wave = None
        return True

    def _drive_stop(self) -> bool:
        """One tick of the balanced stop ramp (see Waveform.stop_ramp); then output off."""
        k, n = self._stop_k, self._stop_n
        if k >= n:
            self._output_off("stopped")
            return True
        amp = self._stop_a0 * (1.0 - k / n)
        self._stop_k = k + 1
        self.amplitude_ua = amp
        return self._write(self._stop_sign * amp if amp else 0.0, True)
