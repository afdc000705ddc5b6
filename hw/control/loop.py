"""The fixed-rate current loop (run by hw.control.runner, watched by hw.safety.supervisor).

Every tick (default 2 kHz, 500 us) :meth:`ControlLoop.tick`:

1. applies queued commands (from other threads; nothing else crosses threads),
2. reads the e-stop, charger and hardware-latch lines,
3. converts the shunt current, the electrode voltage and, alternately, the compliance rail or the
   ADC reference,
4. runs every per-sample check against the command written on the previous tick (that is what the
   plant has had a tick to follow); any failure calls ``Guard.trip``,
5. computes the next command: waveform x ramped amplitude, corrected by the self-test calibration,
   a per-polarity gain that learns from settled samples, and a small trim that drains net DC charge,
6. writes DAC A (every tick: an output that is not re-confirmed is not trusted),
7. toggles the dead-man kick, only if the output is on and the whole tick succeeded.

Lift-off (current falls while the electrode voltage hits compliance) is not a fault: the current
drops to zero at once (the DAC; the relay stays closed, as in a waveform's rest, so probing never
cycles it), the waveform and timers pause, short probe bursts look for the skin again, and after
``recontact_ms`` of good contact the charge the lift left unbalanced is returned (a gentle ramp of
the opposite polarity, closed on the *measured* net charge) before the amplitude ramps up from
zero. Lifted longer than ``lifted_max_s``, the output is cut (relay open) and stays off: only a new
start (the engine's explicit resume) brings it back. Everything that is a fault trips.

While the output drives, the DAC code carries a small alternating dither (+/- ``DITHER_CODES``,
about 2 uA, charge-balanced tick by tick): a live current channel sees it in every sample, so a
current channel frozen alone is caught within ``FROZEN_TICKS`` whatever the waveform.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator

from hw.clock import Clock
from hw.config import Config
from hw.control.state import ACTIVE, DRIVING, IDLE, CommandRefused, OutputState, Snapshot
from hw.control.tickhist import TickHistogram
from hw.control.waveform import Waveform, WaveformSpec
from hw.hal.board import Board
from hw.hal.bus import SpiFault
from hw.safety import Fault, Guard
from hw.safety import monitor as M
from hw.safety.selftest import post_sequence
from hw.safety.thresholds import (
    BALANCE_EPS_UC,
    DITHER_CODES,
    FROZEN_TICKS,
    RESHUTDOWN_MS,
    RESIDUAL_MS,
    Thresholds,
)

__all__ = [
    "ACTIVE",
    "BALANCE_EPS_UC",
    "DITHER_CODES",
    "DRIVING",
    "FROZEN_TICKS",
    "IDLE",
    "RESHUTDOWN_MS",
    "RESIDUAL_MS",
    "CommandRefused",
    "ControlLoop",
    "OutputState",
    "Snapshot",
]


class ControlLoop:
    """One board's control loop. ``tick()`` is called by a runner at ``loop.rate_hz``."""

    SNAPSHOT_EVERY = 10

    def __init__(self, cfg: Config, board: Board, clock: Clock, guard: Guard | None = None):
        self.cfg = cfg
        self.board = board
        self.clock = clock
        self.guard = guard or Guard(board, clock)
        lim, fe, ch = cfg.limits, cfg.hardware.front_end, cfg.hardware.adc_channels
        self.tick_s = 1.0 / cfg.loop.rate_hz
        self.th = th = Thresholds(cfg, self.tick_s)  # every check's limit, with its rationale
        self._ch_i, self._ch_v = ch.current, ch.electrode_voltage
        self._aux = (ch.compliance_rail, ch.reference)
        # Scale factors
        self._adc_zero = float(fe.adc_zero_code)
        self._adc_ua = fe.adc_ua_per_code
        self._v_per = fe.electrode_v_per_code
        self._dac_zero = fe.dac_zero_code
        self._dac_ua = fe.dac_ua_per_code
        # Never command more than the limit plus the most any correction may add.
        self._max_codes = int(lim.max_current_ua * 1.15 / fe.dac_ua_per_code)
        # Contact quality's log scale (see _publish), precomputed off the real-time path.
        q_lo = math.log(min(20000.0, th.z_max_ohm / 2))
        self._q_log_hi = math.log(th.z_max_ohm)
        self._q_log_scale = 1.0 / (self._q_log_hi - q_lo)
        self._fault_seen = self._alarm_seen = None
        self._fault_dict = self._alarm_dict = None
        self._reshut_at_s = -math.inf
        # The per-sample checks' own debounce state (hw.safety.monitor), reset in place.
        self._resid = M.Residual()
        self._aux_chk = M.AuxChannel()
        self._chan_chk = M.CurrentChannel()
        self._setpoint = M.Setpoint()
        self._contact = M.Contact()
        # The engine's heartbeat bound (never above the lease). None until the first beat: a loop
        # with no service above it (bench, POST tests) is not supervised this way.
        self.service_beat_max_s = th.service_beat_max_s
        self.service_beat_s: float | None = None
        self._slew_up = lim.max_current_ua / lim.ramp_up_s  # uA per second
        self._probe_ua = lim.probe_current_ua
        self._probe_interval_s = lim.probe_interval_ms / 1000.0
        self._probe_ticks = 8
        self._recontact_s = lim.recontact_ms / 1000.0
        # Calibration (from the self-test) and closed-loop correction
        self.cal_gain = 1.0  # true uA per nominal uA of the stage
        self.cal_offset_ua = 0.0  # true uA flowing at a zero command
        self.adc_offset_codes = 0.0  # ADC reading with nothing flowing
        self._g = {1.0: 1.0, -1.0: 1.0}  # per-polarity learned gain
        # State
        self.state = OutputState.OFF
        self._cmds: collections.deque[Callable[[], None]] = collections.deque()
        self.on_command: Callable[[], None] | None = None  # set by the runner (LoopRunner)
        self.events: collections.deque[tuple[float, str, dict]] = collections.deque(maxlen=1000)
        self._event_listeners: list[Callable[[float, str, dict], None]] = []
        self.ticks = 0
        self.overruns = 0
        self.last_tick_s = clock.now()
        self.gap_max_s = 0.0
        self.last_adc_s = clock.now()
        self._aux_i = 0
        self._kick = False
        self._post: Iterator[float] | None = None
        self._post_wait_until = 0.0
        self.post_result: dict | None = None
        self.residual_ua = 0.0  # |current| measured while off or tripped
        self._dither = DITHER_CODES
        self._q_carry_uc = 0.0  # net charge left by output that ended unbalanced (a lift cut)
        self.snapshot: Snapshot | None = None
        self.runner_hists: tuple[TickHistogram, TickHistogram] | None = None  # (late, gap)
        self.guard.listeners.append(self._on_trip)
        self._reset_treatment()
        self._publish(clock.now())

    # ------------------------------------------------------------------ treatment bookkeeping
    def _reset_treatment(self, *, resume: bool = False) -> None:
        """Fresh command state. A resume keeps the treatment's accounting (charge, net charge,
        output time, peak) so that what is still unbalanced is balanced before treatment goes on;
        a new treatment also forgets the learned per-polarity gain."""
        if not resume:
            self.q_abs_uc = 0.0
            self.q_net_uc = 0.0
            self.peak_ua = 0.0
            self.active_s = 0.0
            self._g = {1.0: 1.0, -1.0: 1.0}
        self.wave: Waveform | None = None
        self._pending_wave: WaveformSpec | None = None
        self.target_ua = 0.0
        self.amplitude_ua = 0.0
        self._stop_sign, self._stop_a0, self._stop_n, self._stop_k = 0.0, 0.0, 0, 0
        self._cmd_prev = 0.0  # uA the plant was told on the previous tick (0 if disabled)
        self._cmd_prev2 = 0.0
        self._t_cmd_change = -1.0  # when the command last changed sign or size, and from what
        self._cmd_old_abs = 0.0
        self._resid.since_s = None
        self._q_closed_uc = self.q_net_uc  # net charge at the end of the last whole pair
        self._bal_sign = 0.0
        self._meas_acc = 0.0
        self._meas_n = 0
        self.measured_ua = 0.0
        self.impedance_ohm: float | None = None
        self._imp = M.Impedance()  # the impedance estimate and the electrodes-touching check
        self.contact = True
        self.lease_deadline: float | None = None
        self.max_output_s = self.cfg.limits.max_output_s
        self._lifted_since = 0.0
        self._next_probe = 0.0
        self._probe_left = 0
        self._probe_sign = 1.0
        self._probe_good = 0
        self._probe_bad = 0
        self._good_since: float | None = None
        self._cmd_dithered = False
        self._reset_checks()

    # ------------------------------------------------------------------ commands (any thread)
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
            self._g = {1.0: 1.0, -1.0: 1.0}  # a new calibration: learn the gain afresh
            self.state = OutputState.POST
            self.post_result = None
            self._post = post_sequence(self)
            self._post_wait_until = self.clock.now()

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

    # ------------------------------------------------------------------ internals
    def _event(self, kind: str, **data) -> None:
        t = self.clock.now()
        self.events.append((t, kind, data))
        for fn in self._event_listeners:
            try:
                fn(t, kind, data)
            except Exception:  # noqa: BLE001 - observers never disturb the loop
                pass

    def _on_trip(self, record) -> None:
        # Called from whichever thread tripped; the loop sees the latch on its next tick.
        self._event("fault", **record.as_dict())

    def _output_off(self, why: str) -> None:
        """Every normal end of output (stop, lift-off timeout): the guard's one cut."""
        self.guard.cut(self._to_code(0.0))
        self._q_carry_uc = self.q_net_uc
        self._cmd_dithered = False
        self.state = OutputState.OFF
        self.amplitude_ua = 0.0
        self._cmd_prev = self._cmd_prev2 = 0.0
        self._reset_checks()
        self._event("output_off", reason=why)

    def _to_code(self, ua: float) -> int:
        """DAC A code for a wanted true current, through the self-test calibration."""
        nominal = (ua - self.cal_offset_ua) / self.cal_gain
        code = round(nominal / self._dac_ua)
        if code > self._max_codes:
            code = self._max_codes
        elif code < -self._max_codes:
            code = -self._max_codes
        return self._dac_zero + code

    def read_current(self) -> tuple[int, float]:
        """One shunt conversion: (raw code, uA). For the self-test; the loop reads inline."""
        code = self.board.adc.read(self._ch_i)
        return code, (code - self._adc_zero - self.adc_offset_codes) * self._adc_ua

    # ------------------------------------------------------------------ the tick
    def tick(self) -> None:
        """One control period. Never raises: every failure becomes a trip."""
        now = self.clock.now()
        gap = now - self.last_tick_s
        self.last_tick_s = now
        self.ticks += 1
        if gap > self.gap_max_s and self.ticks > 1:
            self.gap_max_s = gap
        try:
            while self._cmds:
                self._cmds.popleft()()
            healthy = self._tick(now, gap)
        except SpiFault as e:
            self.guard.trip(Fault.SPI_ERROR, str(e))
            healthy = False
        except Exception as e:  # noqa: BLE001 - a bug must still end in the safe state
            self.guard.trip(Fault.INTERNAL, f"{type(e).__name__}: {e}")
            healthy = False
        if self.guard.tripped and self.state != OutputState.TRIPPED:
            self._enter_tripped()
        # Lifted, the relay stays closed (the DAC holds zero, checked every tick like a rest).
        if healthy and (self.state in DRIVING or self.state == OutputState.LIFTED):
            self._kick = not self._kick
            self.board.lines.kick_pin.state = self._kick
        if self.ticks % self.SNAPSHOT_EVERY == 0:
            self._publish(now)

    def _enter_tripped(self) -> None:
        # Re-assert the cut from the loop's own thread (trip() may have run on another one, and
        # may have had to write the SPI shutdown without the bus lock, or failed to).
        lines = self.board.lines
        lines.output_enable.off()
        lines.dac_shutdown.off()
        self._reshutdown()
        self._reshut_at_s = self.clock.now()
        if self.state in ACTIVE or self.state == OutputState.POST:
            # Current flowed on purpose until now: what flows from here on is residual. (From
            # the off state it already was, and its time keeps counting.)
            self._resid.since_s = None
        self.state = OutputState.TRIPPED
        self._post = None
        self.amplitude_ua = 0.0
        self.target_ua = 0.0
        self._cmd_prev = self._cmd_prev2 = 0.0
        self._reset_checks()
        self.lease_deadline = None
        self._publish(self.clock.now())

    def _reshutdown(self) -> None:
        b = self.board
        try:
            with b.bus_lock:
                b.dac.shutdown(b.zero_code)
        except Exception:  # noqa: BLE001 - enable and /SHDN are already low; try again later
            self.guard.safe_state_errors += 1

    def can_idle(self) -> bool:
        """Whether a runner may tick at its idle rate: the output off or tripped, and no
        current flowing (a residual current is watched at the full rate)."""
        return self.state in IDLE and self.residual_ua <= self.th.zero_tol_ua

    def _reset_checks(self) -> None:
        """Every check's debounce back to zero (the output ended, or a fault): the impedance
        estimate and the residual-current timer are kept."""
        self._aux_chk.ref_n = self._aux_chk.rail_n = 0
        self._chan_chk.reset()
        self._setpoint.n = 0
        self._contact.reset()
        self._imp.lo_n = 0

    def _check_residual(self, now: float, i: float, where: str) -> bool:
        """Current with the output off: nothing may flow. Raises the alarm; True if raised."""
        ai = i if i >= 0 else -i
        self.residual_ua = ai
        if self._resid.held(now, ai, self.th):
            if self.guard.alarm is None:
                self.guard.raise_alarm(
                    Fault.RESIDUAL_CURRENT, f"{i:.1f} uA with the output {where}"
                )
            return True
        return False

    def _tick(self, now: float, gap: float) -> bool:
        """Drain-free part of the tick: inputs, sample, every check (hw.safety.monitor, in its
        order; the first report trips), then regulate and actuate. True if the tick succeeded."""
        g = self.guard
        b = self.board
        th = self.th
        state = self.state
        if g.tripped:
            # Keep sampling: the watchdog needs a live ADC, and the cut is seen to hold: current
            # that still flows (a welded relay and a runaway stage) raises the residual alarm.
            with b.bus_lock:
                code = b.adc.read(self._ch_i)
            self.last_adc_s = now
            self._check_residual(
                now, (code - self._adc_zero - self.adc_offset_codes) * self._adc_ua, "tripped"
            )
            if now - self._reshut_at_s >= th.reshut_s:
                self._reshut_at_s = now
                self._reshutdown()
            return False
        lines = b.lines
        active = state in ACTIVE
        r = M.interlocks(
            lines,
            active,
            state == OutputState.RAMP_DOWN,
            now,
            self.lease_deadline,
            self.service_beat_s,
            gap,
            th,
        )
        if r is not None:
            g.trip(*r)
            return False
        if state == OutputState.POST:
            return self._post_tick(now)

        # -- sample
        adc = b.adc
        with b.bus_lock:
            c0 = adc.read(self._ch_i)
            c1 = adc.read(self._ch_v)
            self._aux_i ^= 1
            aux_ch = self._aux[self._aux_i]
            ca = adc.read(aux_ch)
        self.last_adc_s = now
        i = (c0 - self._adc_zero - self.adc_offset_codes) * self._adc_ua
        v = (c1 - 2048) * self._v_per
        ai = i if i >= 0 else -i
        # Output off: nothing may flow. Judged before the checks below, so a current that trips
        # one of them (an over-current with the output off) already counts as residual.
        resid = not active and not lines.enable_pin.state and self._check_residual(now, i, "off")

        # -- checks that hold in every state
        prev = self._cmd_prev
        r = (
            M.adc_saturated(c0)
            or M.overcurrent(i, ai, th)
            or self._aux_chk.check(self._aux_i, ca, th)
            # While driving, the dither moves a live channel every tick (see DITHER_CODES).
            or self._chan_chk.check(
                c0, prev, self._cmd_prev2, state in DRIVING and self._cmd_dithered, th
            )
        )
        if r is not None:
            g.trip(*r)
            return False
        if not active:
            return not resid

        # -- output on: dose accounting and the checks against the previous command
        dt = self.tick_s
        self.q_net_uc += i * dt
        self.q_abs_uc += ai * dt
        if state != OutputState.LIFTED:
            self.active_s += dt
        if ai > self.peak_ua:
            self.peak_ua = ai
        r = M.dose(self.q_net_uc, self.active_s, self.max_output_s, th)
        if r is not None:
            g.trip(*r)
            return False
        if state == OutputState.LIFTED:
            return self._lifted_tick(now, i, v)

        if self._over_setpoint(now, i, "command"):
            return False
        aprev = prev if prev >= 0 else -prev
        av = v if v >= 0 else -v
        # Judged in time, not in ticks: after a late tick the runner catches up with ticks back to
        # back, and a sample taken within the stage's settling time of a command change (or, for
        # the impedance, within two ticks' time: the skin's RC) says nothing about the contact.
        since_change = now - self._t_cmd_change
        contact = self._contact
        r = contact.follow(since_change, i, ai, prev, aprev, v, av, th)
        if r is not None:
            return self._contact_report(now, r)
        # Settled: the same polarity and (within trim) the same amplitude as the tick before.
        p2 = self._cmd_prev2
        settled = (
            aprev >= th.follow_min_ua
            and prev * p2 > 0
            and -0.03 * aprev < prev - p2 < 0.03 * aprev
            and since_change >= th.z_settle_s
        )
        if settled and prev * i > 0 and av < th.v_comp_v:
            r = self._imp.sample(v / i * 1e6, th)
            self.impedance_ohm = self._imp.ema_ohm
            if r is not None:
                g.trip(*r)
                return False
        r = contact.impedance_high(aprev, av, self.impedance_ohm, th)
        if r is not None:
            return self._contact_report(now, r)
        if aprev >= th.follow_min_ua:
            self._meas_acc += ai
            self._meas_n += 1
            # Learn the per-polarity gain on settled samples, not while compliance-limited.
            if settled and av < th.v_comp_v and prev * i > 0:
                s = 1.0 if prev > 0 else -1.0
                gk = self._g[s] * (1.0 + 0.02 * (prev - i) / prev * s * s)
                self._g[s] = 0.9 if gk < 0.9 else 1.1 if gk > 1.1 else gk

        # -- next command
        return self._drive(now)

    def _contact_report(self, now: float, r: tuple) -> bool:
        """A contact check's report: a lift-off (the tick goes on lifted) or a fault (trips)."""
        if r[0] is M.LIFT:
            self._lift(now, r[1])
            return True
        self.guard.trip(*r)
        return False

    def _over_setpoint(self, now: float, i: float, what: str) -> bool:
        """The current within its last command (hw.safety.monitor.Setpoint); trips and returns
        True when it is not."""
        r = self._setpoint.check(
            now,
            i,
            self._cmd_prev,
            self._cmd_prev2,
            self._t_cmd_change,
            self._cmd_old_abs,
            what,
            self.state,
            self.th,
        )
        if r is not None:
            self.guard.trip(*r)
            return True
        return False

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

    # ------------------------------------------------------------------ charge balance
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

    # ------------------------------------------------------------------ contact loss
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

    # ------------------------------------------------------------------ self-test
    def _post_tick(self, now: float) -> bool:
        if now < self._post_wait_until:
            return True
        try:
            wait = next(self._post)
        except StopIteration:
            self._post = None
            if not self.guard.tripped:
                self.state = OutputState.OFF
            return True
        self._post_wait_until = now + wait
        self.last_adc_s = now  # the self-test reads the ADC itself
        return True

    def kick_once(self) -> None:
        """Toggle the dead-man line (the self-test drives it directly)."""
        self._kick = not self._kick
        self.board.lines.kick_pin.state = self._kick

    # ------------------------------------------------------------------ status
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
