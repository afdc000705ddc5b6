"""The fixed-rate current loop: one board's ``ControlLoop``, its state and its tick.

Every tick (default 2 kHz, 500 us; run by hw.control.runner, watched by hw.safety.supervisor),
:meth:`ControlLoop.tick`:

1. applies queued commands (hw.control.commands; from other threads, nothing else crosses threads),
2. checks the inputs (hw.safety.monitor ``interlocks``: e-stop, charger, hardware latch, lease,
   engine heartbeat, tick gap),
3. converts the shunt current, the electrode voltage and, alternately, the compliance rail or the
   ADC reference,
4. runs every per-sample check (hw.safety.monitor, thresholds from hw.safety.thresholds) against
   the command written on the previous tick (that is what the plant has had a tick to follow); the
   first report calls ``Guard.trip``, and a lift-off is handed to hw.control.contact,
5. computes and writes the next command (hw.control.regulator; after a lift-off,
   hw.control.balance first returns the charge it left): DAC A every tick (an output that is not
   re-confirmed is not trusted),
6. toggles the dead-man kick, only if the output is on and the whole tick succeeded,
7. every SNAPSHOT_EVERY ticks publishes a snapshot (hw.control.status).

While the self-test runs (state POST) the tick advances hw.safety.selftest instead of 3-5.
Everything that is a fault trips; nothing resumes by itself.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator

from hw.clock import Clock
from hw.config import Config
from hw.control.balance import ChargeBalance
from hw.control.commands import Commands
from hw.control.contact import LiftOff
from hw.control.postport import LoopPostPort
from hw.control.regulator import Regulator
from hw.control.state import ACTIVE, DRIVING, IDLE, CommandRefused, OutputState, Snapshot
from hw.control.status import Status
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


class ControlLoop(Commands, Regulator, LiftOff, ChargeBalance, Status):
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
        # Called on the loop's thread by the runner on the tick that leaves its idle pace (a
        # start, a self-test, a residual current): the Supervisor wakes to full-rate checks.
        self.on_busy: Callable[[], None] | None = None
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
        # A stall is judged (and the worst gap kept) only across ticks of an output that was on:
        # the tick that applies a start follows the idle pace's longer gap, which stalled nothing.
        if self.state not in ACTIVE:
            gap = 0.0
        elif gap > self.gap_max_s and self.ticks > 1:
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
            if now - self._reshut_at_s >= th.reshut_s - 1e-9:  # (float steps of the pace)
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
            # The electrode voltage serves only the checks of an output that is on (contact,
            # compliance, impedance): with the output off it is not read, a third of the idle cost.
            c1 = adc.read(self._ch_v) if active else 2048
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

    # ------------------------------------------------------------------ self-test
    def _begin_post(self) -> None:
        """On the loop's thread, output off: the self-test runs from the next tick."""
        self._g = {1.0: 1.0, -1.0: 1.0}  # a new calibration: learn the gain afresh
        self.state = OutputState.POST
        self.post_result = None
        self._post = post_sequence(LoopPostPort(self))  # POST sees only the port
        self._post_wait_until = self.clock.now()

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
