"""The loop's commands: the API other threads call (start, set_target, set_waveform, stop,
renew_lease, service_beat, estop, run_post, acknowledge).

Each validates on the caller's thread (a refusal raises :class:`CommandRefused` and changes
nothing) and queues what it changes for the loop's thread, which applies the queue at the start of
its next tick; only ``estop`` (a trip) and ``service_beat`` (a plain store) act at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hw.control.state import ACTIVE, CommandRefused, OutputState
from hw.control.waveform import Waveform, WaveformSpec
from hw.safety import Fault
from hw.safety.thresholds import BALANCE_EPS_UC


class Commands:
    """Methods of :class:`~hw.control.loop.ControlLoop` (a mixin: the state is the loop's)."""

    def _queue(self, fn: Callable[[], None]) -> None:
        self._cmds.append(fn)
        wake = self.on_command
        if wake is not None:
            wake()  # an idle runner ticks now rather than at its next idle deadline

    def start(
        self,
        spec: WaveformSpec,
        target_ua: float,
        *,
        max_output_s: float | None = None,
        resume: bool = False,
    ) -> None:
        """Start output: ramp from zero to ``target_ua`` with the given waveform.

        Refused unless the self-test passed, nothing is latched, no charger is connected, the
        e-stop is released and the output is off. ``max_output_s`` can only lower the limit.
        ``resume`` continues the same treatment (after a pause): its accounting is kept, and what
        it left unbalanced (a lift-off cut mid-phase) is balanced before the ramp.
        """
        self._check_target(target_ua)
        Waveform(spec, self.tick_s)  # validates that the phases fit
        reason = self.start_blocker()
        if reason:
            raise CommandRefused(reason)
        limit = self.cfg.limits.max_output_s
        if max_output_s is not None:
            if not (max_output_s > 0 and math.isfinite(max_output_s)):
                raise CommandRefused("max_output_s must be a positive number of seconds")
            limit = min(limit, max_output_s)

        def apply() -> None:
            if self.state != OutputState.OFF or self.start_blocker():
                self._event("start_refused", reason=self.start_blocker() or str(self.state))
                return
            self.board.lines.test_load.off()
            if not self.guard.enable():
                self._event("start_refused", reason="a fault is latched")
                return
            self._reset_treatment(resume=resume)
            # The bound counts this treatment's output time, which a resume carries on.
            self.max_output_s = min(self.cfg.limits.max_output_s, self.active_s + limit)
            self.wave = Waveform(spec, self.tick_s)
            self.target_ua = float(target_ua)
            self.lease_deadline = self.clock.now() + self.th.lease_s
            self.board.lines.output_led.on()
            self._q_carry_uc = 0.0
            if resume and abs(self.q_net_uc) > BALANCE_EPS_UC:
                self._begin_balance()
            else:
                self.state = OutputState.RAMP_UP
            self._event("output_on", target_ua=self.target_ua, resume=resume)

        self._queue(apply)

    def start_blocker(self) -> str | None:
        """Why output cannot start now, or None."""
        if self.guard.tripped:
            fault = self.guard.fault
            return (
                f"a fault is latched ({fault.code if fault else 'being cut'}); acknowledge it first"
            )
        if not self.guard.post_valid:
            return "the self-test has not passed since the last start or fault"
        if self.state != OutputState.OFF:
            return f"the output is not off (it is {self.state})"
        lines = self.board.lines
        if lines.charger_pin.state:
            return "a charger is connected; the device never treats while charging"
        if lines.estop_pressed():
            return "the e-stop is pressed"
        if lines.latch_pin.state:
            return "the hardware current latch is tripped; run the self-test"
        return None

    def _check_target(self, target_ua: float) -> None:
        lim = self.cfg.limits
        if not isinstance(target_ua, int | float) or isinstance(target_ua, bool):
            raise CommandRefused("target_ua must be a number")
        if not (0 <= target_ua <= lim.level_max_ua) or math.isnan(target_ua):
            raise CommandRefused(f"target_ua must be 0..{lim.level_max_ua} uA")

    def set_target(self, target_ua: float) -> None:
        """Change the amplitude; it slews at the ramp rate, never jumps."""
        self._check_target(target_ua)

        def apply() -> None:
            if self.state in (
                OutputState.RAMP_UP,
                OutputState.ON,
                OutputState.LIFTED,
                OutputState.BALANCE,
            ):
                self.target_ua = float(target_ua)
                if self.state == OutputState.ON:
                    self.state = OutputState.RAMP_UP

        self._queue(apply)

    def set_waveform(self, spec: WaveformSpec) -> None:
        """Switch waveform at the end of the current pair (keeps every pair balanced)."""
        Waveform(spec, self.tick_s)

        def apply() -> None:
            if self.wave is not None:
                self._pending_wave = spec

        self._queue(apply)

    def stop(self) -> None:
        """Normal stop: ramp down over ``ramp_down_s``, then output off."""

        def apply() -> None:
            if self.state in (OutputState.RAMP_UP, OutputState.ON):  # not again mid ramp-down
                self.state = OutputState.RAMP_DOWN
                min_ticks = max(1, round(self.cfg.limits.ramp_down_s / self.tick_s))
                sign, a0, n = self.wave.stop_ramp(self.amplitude_ua, min_ticks)
                self._stop_sign, self._stop_a0, self._stop_n, self._stop_k = sign, a0, n, 0
            elif self.state in (OutputState.LIFTED, OutputState.BALANCE):
                # Lifted: nothing flows. Balancing: a slow ramp toward zero, ended early; what
                # is left unbalanced stays in the record (net_charge_uc).
                self._output_off("stopped")

        self._queue(apply)

    def renew_lease(self) -> None:
        def apply() -> None:
            if self.state in ACTIVE:
                self.lease_deadline = self.clock.now() + self.th.lease_s

        self._queue(apply)

    def service_beat(self) -> None:
        """The treatment engine is alive (any thread; a plain store). Once beaten, output that is
        on trips INTERNAL when no beat came within ``loop.service_heartbeat_ms``."""
        self.service_beat_s = self.clock.now()

    def estop(self, detail: str = "on-screen STOP") -> None:
        """Cut at once from the calling thread: no queue, no ramp."""
        self.guard.trip(Fault.ESTOP, detail)

    def run_post(self) -> None:
        """Start the power-on self-test (output must be off)."""
        if self.state not in (OutputState.OFF, OutputState.TRIPPED):
            raise CommandRefused(f"the self-test needs the output off (it is {self.state})")
        if self.guard.tripped:
            raise CommandRefused("acknowledge the fault before the self-test")
        # The charger interlock sits in the relay coil's chain: with a charger in, the relay
        # cannot close and the self-test could only fail. Say what to do instead. (A pressed
        # e-stop trips ESTOP in every state, so it is refused above once the loop has seen it.)
        if self.board.lines.charger_pin.state:
            raise CommandRefused("a charger is connected: unplug it, then run the self-test")
        self.post_result = None  # nobody may read the previous result as this one's

        def apply() -> None:
            if self.state != OutputState.OFF or self.guard.tripped:
                return
            self._begin_post()

        self._queue(apply)

    def acknowledge(self) -> None:
        """Clear a latched fault once its cause is gone. Raises CommandRefused otherwise."""
        if self.state == OutputState.POST:
            raise CommandRefused("the self-test is running")
        if self.guard.tripped and self.state != OutputState.TRIPPED:
            # The loop has not yet taken the trip in hand; clearing the latch now would let it
            # carry on from the state it was in.
            raise CommandRefused("the fault is still being handled; try again in a moment")
        reason = self.guard.acknowledge(self._cause_present)
        if reason:
            raise CommandRefused(reason)
        self._resid.since_s = None

        def apply() -> None:
            if not self.guard.tripped and self.state == OutputState.TRIPPED:
                self.state = OutputState.OFF
                self._event("acknowledged")

        self._queue(apply)

    def _cause_present(self) -> str | None:
        lines = self.board.lines
        if self.residual_ua > self.th.zero_tol_ua:
            return (
                f"{self.residual_ua:.0f} uA still flows with the output off: take the electrodes "
                "off and contact service"
            )
        if lines.estop_pressed():
            return "release the e-stop first"
        if lines.charger_pin.state:
            return "unplug the charger first"
        return None

    def add_event_listener(self, fn: Callable[[float, str, dict], None]) -> None:
        self._event_listeners.append(fn)
