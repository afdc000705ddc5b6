"""The analog world behind the simulated chips: V-to-I stage, relay, load, shunt, latch, dead-man.

Topology (see docs/hardware.md)::

    DAC A -> Howland V-to-I (gain/offset error, lag, compliance) -> relay -> load -> shunt
    relay coil    <=>  output_enable AND dead-man monostable held AND NOT latch
                       AND e-stop loop closed AND no charger (each element unless bridged)
    contacts      :    close ``relay_operate_s`` after the coil is energised, bounce for
                       ``relay_bounce_s`` (current flickers), open ``relay_release_s`` after it
                       drops; a welded relay conducts whatever the coil does
    load          =    electrodes on skin (Rs + Rp||Cp, scaled by contact), open when lifted,
                       or the internal test resistor when test_load is selected
    comparator    :    |I| > threshold(DAC B) sets the latch; a re-arm edge clears it if |I| is low

The plant only moves forward in time when asked (``advance(t)``), so it runs in simulated time for
tests and in real time for the demo. Every quantity carries its unit in its name.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hw.config import Config
from hw.hal.chips.mcp4922 import CHANNEL_A, CHANNEL_B, DacWord

OPEN_OHM = 20e6  # leakage of lifted electrodes: a current source into it sits at compliance
# Contact bounce: the intervals (fractions of relay_bounce_s after first touch) during which the
# bouncing contacts conduct; between them they are apart. Irregular and shortening, as on a scope.
BOUNCE_CLOSED = ((0.0, 0.12), (0.3, 0.4), (0.55, 0.7), (0.8, 0.88), (0.94, 0.97))


@dataclass(frozen=True)
class Load:
    """Electrode-skin load: series resistance plus a parallel RC. ``contact`` 0..1 scales area."""

    rs_ohm: float
    rp_ohm: float = math.inf
    cp_f: float = 0.0
    contact: float = 1.0  # fraction of full contact area; 0 = lifted

    @staticmethod
    def resistor(ohm: float) -> Load:
        return Load(rs_ohm=ohm)


# Loads used by the demo, the tests and the bench. Values are typical of wet-gel facial electrodes
# (a few kOhm, time constant ~1 ms); dry skin is an order of magnitude higher, sweat lower.
SKIN = Load(rs_ohm=1000.0, rp_ohm=15000.0, cp_f=47e-9)
DRY_SKIN = Load(rs_ohm=3000.0, rp_ohm=200000.0, cp_f=10e-9)
# Gel-free but misted with water or a toner: between gelled and dry.
DAMP_SKIN = Load(rs_ohm=2000.0, rp_ohm=40000.0, cp_f=20e-9)
SWEATY_SKIN = Load(rs_ohm=300.0, rp_ohm=2500.0, cp_f=100e-9)


OBSERVE_QUANTUM_S = 50e-6  # the plant's time resolution for readings (see Plant.observe)


class Plant:
    """Physical state of the simulated board. Not thread-safe: the SimBoard serialises access."""

    def __init__(self, cfg: Config, t0_s: float, seed: int = 1):
        fe = cfg.hardware.front_end
        self.fe = fe
        self.rng = random.Random(seed)
        # The true stage differs from the nominal scale in the config, as a real one would, so
        # the loop's calibration and closed-loop correction have something to correct.
        self.stage_gain = 1.03
        self.stage_offset_ua = 3.0
        self.stage_tau_s = 60e-6
        self.stage_rout_ohm = 5e6  # Howland output resistance
        self.compliance_v = fe.compliance_v
        self.adc_noise_ua = 0.6
        self.adc_offset_codes = 1.4
        self.v_noise_v = 0.01
        self.comparator_delay_s = 50e-6
        # A small signal relay: the contacts first touch this long after the coil is energised,
        # then bounce (conduct in short, irregular bursts) until they settle; on release they part
        # this long after the coil drops. hardware.front_end.relay_operate_ms / relay_release_ms
        # are the datasheet maxima the software waits for; these are what the part really does.
        self.relay_operate_s = 3.5e-3
        self.relay_bounce_s = 1.0e-3
        self.relay_release_s = 0.8e-3  # coil clamped by a Zener, not a plain diode: fast
        self.deadman_s = fe.deadman_ms / 1000.0
        self.rail_v = fe.rail_nominal_v

        self.t_s = t0_s
        self.load: Load = SKIN
        self.test_load = Load.resistor(fe.test_load_ohm)
        # MCP4922 supply and reference (docs/hardware.md): VREF A and B are tied to the 3.3 V
        # VDD, which the unbuffered reference input allows (0..VDD) and the buffered one does not
        # (0.04 V..VDD - 0.04 V): a BUF=1 word gets a reference 40 mV low.
        self.dac_vdd_v = 3.3
        self.dac_vref_v = 3.3
        # Commanded by the chips and lines: the last word latched per channel. Until the first
        # write both are shut down; the stage input sits on its bias network at mid-scale (0 uA).
        self.dac_a_word = DacWord(CHANNEL_A, fe.dac_zero_code, active=False)
        self.dac_b_word = DacWord(CHANNEL_B, 0, active=False)
        self.shdn_high = False  # hardware /SHDN of the MCP4922, pulled down: shut down
        self.enable = False
        self.test_load_selected = False
        self.last_kick_s = -1e9
        self.kick_level = False
        # Hardware state
        self.latched = True  # threshold at 0 V until the DAC sets it: latched at power-up
        self.latch_pending_s: float | None = None
        self.relay_closed = False  # the contacts conduct (settled, bouncing shut, or welded)
        self.coil_on = False
        self._t_touch_s = math.inf  # contacts first touch (operate time after the coil is on)
        self._t_settled_s = math.inf  # contacts have stopped bouncing
        self._t_part_s = math.inf  # contacts part (release time after the coil dropped)
        self.i_stage_ua = 0.0  # stage output after its lag
        self.i_load_ua = 0.0  # what really flows through the load and shunt
        self.vc_v = 0.0  # voltage on the load's parallel capacitor
        self.v_out_v = 0.0
        # The series chain of the coil (docs/hardware.md): the e-stop loop and the charger
        # detect, each with a self-test line that opens it as a press / a charger would.
        self.estop_pressed = False
        self.estop_wire_broken = False
        self.estop_test = False
        self.charger_present = False
        self.charger_wire_broken = False
        self.charger_test = False
        self.estop_bridged = False  # the chain's e-stop element does not cut (shorted MOSFET)
        self.charger_bridged = False  # the chain's charger element does not cut
        # Faults
        self.welded = False
        self.dead_comparator = False
        self.shorted_shunt = False
        self.dac_stuck = False
        self.open_circuit = False  # a break inside the output path, before the sense point
        self.runaway = False  # the stage's op-amp fails to the rail
        # Ground truth for benches: integrals of the real current
        self.q_net_uc = 0.0
        self.q_abs_uc = 0.0
        self.on_relay_change = None  # callback(t_s, closed)
        self.on_latch_change = None  # callback(t_s, latched)
        # The time the relay was last brought up to date (_update_relay). Every change of the
        # coil's inputs is followed by an update (the board's pin hooks and fault injection do
        # it), so at that same time it is current and need not be worked out again.
        self._relay_synced_s: float | None = None

    # ---- commands from chips and lines -------------------------------------------------------
    @property
    def dac_a_code(self) -> int:
        return self.dac_a_word.code

    @property
    def dac_b_code(self) -> int:
        return self.dac_b_word.code

    @property
    def dac_a_on(self) -> bool:
        """DAC A drives its output: software-active and the hardware /SHDN line high."""
        return self.dac_a_word.active and self.shdn_high

    def dac_output_v(self, word: DacWord) -> float:
        """The channel's output voltage for a latched word (shut-down handled by the caller):
        VOUT = G * VREF * D / 4096, G = 1 or 2 by /GA, clipped at the rails (datasheet 4.1)."""
        vref = self.dac_vref_v
        if word.buffered:
            vref = min(max(vref, 0.04), self.dac_vdd_v - 0.04)
        gain = 1 if word.gain_1x else 2
        return min(gain * vref * word.code / 4096.0, self.dac_vdd_v)

    def _dac_equivalent_code(self, word: DacWord) -> float:
        """The 1x-unbuffered code that would give this word's output: what the stage and the
        comparator, scaled in those codes (front_end.dac_ua_per_code), really see."""
        if word.buffered or not word.gain_1x:
            return self.dac_output_v(word) / self.dac_vref_v * 4096.0
        return float(word.code)  # exact for the normal word

    @property
    def i_command_ua(self) -> float:
        """Nominal current of DAC A's output, in uA (0 when shut down: the bias network holds
        the stage input at mid-scale)."""
        if not self.dac_a_on:
            return 0.0
        code = self._dac_equivalent_code(self.dac_a_word)
        return (code - self.fe.dac_zero_code) * self.fe.dac_ua_per_code

    @property
    def dac_target_ua(self) -> float:
        """What DAC A asks the (healthy) stage to drive, gain and offset applied, in uA."""
        if not self.dac_a_on:
            return 0.0
        return self.i_command_ua * self.stage_gain + self.stage_offset_ua

    @property
    def stage_target_ua(self) -> float:
        """What the stage really tries to drive (its gain and offset applied), in uA."""
        if self.runaway:
            return 1e6
        if self.dac_stuck:
            return self._stuck_ua * self.stage_gain + self.stage_offset_ua
        if not self.dac_a_on:
            return 0.0
        return self.i_command_ua * self.stage_gain + self.stage_offset_ua

    @property
    def threshold_ua(self) -> float:
        """Comparator threshold from DAC B, in uA; a shut-down channel B reads 0 V."""
        if not (self.dac_b_word.active and self.shdn_high):
            return 0.0
        return self._dac_equivalent_code(self.dac_b_word) * self.fe.threshold_ua_per_code

    def kick(self, level: bool, t_s: float) -> None:
        if level != self.kick_level:
            self.kick_level = level
            self.last_kick_s = t_s  # the monostable retriggers on every edge

    def rearm(self, t_s: float) -> None:
        if self.dead_comparator:
            return
        if self.threshold_ua > 0 and abs(self.i_load_ua) < self.threshold_ua:
            self._set_latch(False, t_s)
            self.latch_pending_s = None

    # ---- physics -------------------------------------------------------------------------------
    def _set_latch(self, value: bool, t_s: float) -> None:
        if value != self.latched:
            self.latched = value
            if self.on_latch_change:
                self.on_latch_change(t_s, value)

    @property
    def estop_loop_closed(self) -> bool:
        """ESTOP_OK: the NC loop is closed (released, cable whole, not under test)."""
        return not (self.estop_pressed or self.estop_wire_broken or self.estop_test)

    @property
    def charger_ok(self) -> bool:
        """CHG_OK: the detect circuit says no charger, its wire is whole, not under test."""
        return not (self.charger_present or self.charger_wire_broken or self.charger_test)

    @property
    def interlocks_closed(self) -> bool:
        """The coil's series chain conducts: each element closed by its signal or bridged."""
        return (self.estop_loop_closed or self.estop_bridged) and (
            self.charger_ok or self.charger_bridged
        )

    def _coil_wanted(self, t_s: float) -> tuple[bool, float]:
        """Whether the coil is energised at ``t_s`` and since when a drop is due (its cause's
        time: the dead-man expires at the last kick plus its hold time)."""
        if not (self.enable and not self.latched and self.interlocks_closed):
            return False, t_s
        expiry = self.last_kick_s + self.deadman_s
        if t_s < expiry:
            return True, t_s
        return False, expiry

    def _contacts_at(self, t_s: float) -> bool:
        """Whether the contacts conduct at ``t_s`` (for the interval up to the next edge)."""
        if self.welded:
            return True
        if t_s >= self._t_part_s:
            return False
        if t_s >= self._t_settled_s:
            return True
        if t_s >= self._t_touch_s:
            # 1 ns to the right: at a bounce edge, the state that follows it (edges are 30+ us
            # apart), so a piece starting on an edge is judged by what happens inside it.
            x = (t_s + 1e-9 - self._t_touch_s) / self.relay_bounce_s
            return any(a <= x < b for a, b in BOUNCE_CLOSED)
        return False

    def _next_relay_edge(self, after_s: float) -> float:
        """The first time after ``after_s`` at which the coil or the contacts change by
        themselves (dead-man expiry, first touch, a bounce edge, settling, parting)."""
        best = math.inf
        if self.coil_on:
            expiry = self.last_kick_s + self.deadman_s
            if expiry > after_s:
                best = expiry
        if after_s < self._t_part_s < best:
            best = self._t_part_s
        touch = self._t_touch_s
        if touch < best and self._t_settled_s > after_s:
            if touch > after_s:
                return touch
            for pair in BOUNCE_CLOSED:
                for f in pair:
                    t = touch + f * self.relay_bounce_s
                    if after_s < t < best:
                        return t
            if self._t_settled_s < best:
                best = self._t_settled_s
        return best

    @property
    def relay_settled(self) -> bool:
        """The contacts are where the coil puts them: closed and done bouncing, or apart (always
        true of a welded relay, which never moves)."""
        if self.welded:
            return True
        if self.coil_on:
            return self.t_s >= self._t_settled_s
        return self._t_touch_s == math.inf or self.t_s >= self._t_part_s

    def _update_relay(self, t_s: float) -> None:
        """Bring the coil and the contacts up to ``t_s`` (call after any change of their inputs)."""
        want, t_change = self._coil_wanted(t_s)
        if want and not self.coil_on:
            self.coil_on = True
            if self._t_touch_s <= t_s and t_s < self._t_part_s:
                self._t_part_s = math.inf  # re-energised before the contacts parted: they stay
            else:
                self._t_touch_s = t_s + self.relay_operate_s
                self._t_settled_s = self._t_touch_s + self.relay_bounce_s
                self._t_part_s = math.inf
        elif not want and self.coil_on:
            self.coil_on = False
            if self._t_touch_s <= t_change:
                self._t_part_s = max(t_s, t_change + self.relay_release_s)
                # Released before the bounce ended: they part at the release time regardless.
            else:
                self._t_touch_s = self._t_settled_s = math.inf  # dropped before touching
        if t_s >= self._t_part_s and not self.coil_on:
            t_part = self._t_part_s
            self._t_touch_s = self._t_settled_s = self._t_part_s = math.inf
        else:
            t_part = None
        self._relay_synced_s = t_s
        closed = self._contacts_at(t_s)
        if closed != self.relay_closed:
            self.relay_closed = closed
            if self.on_relay_change:
                self.on_relay_change(t_part if (t_part is not None and not closed) else t_s, closed)

    def observe(self, t_s: float) -> None:
        """Bring the plant up to ``t_s`` for a reading (an ADC conversion). Readings closer than
        OBSERVE_QUANTUM_S to the plant's last step see that step: the loop's conversions come
        back to back, 10-30 us apart in real time, and stepping the plant for each cost more than
        the loop's own work. Everything that changes an input (a DAC word, a line, a fault)
        still advances it exactly (:meth:`advance`), and in simulated time, where every
        conversion of a tick has the same time stamp, nothing changes."""
        if t_s - self.t_s >= OBSERVE_QUANTUM_S or self._relay_synced_s != self.t_s:
            self.advance(t_s)

    def advance(self, t_s: float) -> None:
        """Move the plant forward to ``t_s`` (monotonic seconds), in pieces split at every relay
        edge so that the current flows exactly while the contacts conduct."""
        synced = self._relay_synced_s == self.t_s
        if synced and t_s <= self.t_s:
            return  # no time has passed since the relay was last brought up to date
        while self.t_s < t_s:
            if not synced:
                self._update_relay(self.t_s)  # coil and contacts at the start of the piece
            synced = False
            edge = self._next_relay_edge(self.t_s)
            self._advance_to(edge if edge < t_s else t_s)
        self._update_relay(t_s)
        if not self.relay_closed:
            # Contacts apart at t_s: nothing flows now, even if they parted exactly at t_s.
            self.i_load_ua = 0.0
            self.v_out_v = 0.0

    def _advance_to(self, t_s: float) -> None:
        dt = t_s - self.t_s
        if dt <= 0:
            return
        # The contacts hold their state (set by the caller) over the whole piece.
        # Stage: first-order lag toward what it is told (or its rail when it has failed).
        target = self.stage_target_ua
        a = math.exp(-dt / self.stage_tau_s)
        self.i_stage_ua = target + (self.i_stage_ua - target) * a
        i_src = self.i_stage_ua
        vc = self.compliance_v
        if not self.relay_closed or self.open_circuit:
            i = 0.0
            v = 0.0  # sense point is after the relay: nothing drives the electrodes
            self.vc_v *= 0.5 ** (dt / 1e-3)  # the skin capacitance bleeds off
        else:
            load = self.test_load if self.test_load_selected else self.load
            if load.contact <= 0.0:
                i = 0.0
                v = max(-vc, min(vc, i_src * 1e-6 * OPEN_OHM))
                self.vc_v *= 0.5 ** (dt / 1e-3)
            else:
                i, v = self._drive_load(load, i_src * 1e-6, dt)
        self.i_load_ua = i
        self.v_out_v = v
        self.q_net_uc += i * dt
        self.q_abs_uc += abs(i) * dt
        # Comparator with a short propagation delay, then the latch opens the relay.
        if not self.dead_comparator and not self.latched:
            if abs(i) > self.threshold_ua or self.threshold_ua <= 0.0:
                if self.latch_pending_s is None:
                    self.latch_pending_s = self.t_s + self.comparator_delay_s
                if t_s >= self.latch_pending_s:
                    t_latch = self.latch_pending_s
                    self._set_latch(True, t_latch)
                    self.latch_pending_s = None
                    self.t_s = t_latch  # the coil drops when the latch sets, not at the end
                    self._update_relay(t_latch)
            else:
                self.latch_pending_s = None
        self.t_s = t_s

    def _drive_load(self, load: Load, i_a: float, dt: float) -> tuple[float, float]:
        """Current (uA) and voltage (V) into the load over ``dt``, honouring compliance.

        Two modes: the stage is a current source (with a finite output resistance) while the
        voltage it needs is within compliance; beyond that it is a voltage source at +/-compliance
        behind the load's series resistance, and the parallel capacitor charges toward what that
        voltage can sustain.
        """
        vc_max = self.compliance_v
        rs = load.rs_ohm / load.contact
        rp = load.rp_ohm / load.contact
        cp = load.cp_f * load.contact
        has_rc = cp > 0 and math.isfinite(rp)
        # Finite output resistance of the Howland stage: a little current is lost in big loads.
        z_dc = rs + (rp if math.isfinite(rp) else 0.0)
        i_a = i_a * self.stage_rout_ohm / (self.stage_rout_ohm + z_dc)
        if has_rc:
            v_ss = i_a * rp
            vc1 = v_ss + (self.vc_v - v_ss) * math.exp(-dt / (rp * cp))
        elif math.isfinite(rp):
            vc1 = i_a * rp
        else:
            vc1 = 0.0
        v = i_a * rs + vc1
        if abs(v) <= vc_max:
            self.vc_v = vc1
            return i_a * 1e6, v
        sign = 1.0 if v > 0 else -1.0
        vs = sign * vc_max
        if has_rc:
            vc_inf = vs * rp / (rs + rp)
            tau = cp * rs * rp / (rs + rp)
            self.vc_v = vc_inf + (self.vc_v - vc_inf) * math.exp(-dt / tau)
        elif math.isfinite(rp):
            self.vc_v = vs * rp / (rs + rp)
        else:
            self.vc_v = 0.0
        i_lim = (vs - self.vc_v) / rs
        if i_lim * sign < 0:
            i_lim = 0.0
        if abs(i_lim) > abs(i_a):
            i_lim = i_a
        return i_lim * 1e6, vs

    def freeze_dac(self) -> None:
        self.dac_stuck = True
        self._stuck_ua = self.i_command_ua
        self._stuck_on = True

    _stuck_ua = 0.0

    # ---- what the ADC sees ---------------------------------------------------------------------
    def adc_code(self, channel_role: str) -> int:
        fe = self.fe
        if channel_role == "current":
            i = 0.0 if self.shorted_shunt else self.i_load_ua
            code = (
                fe.adc_zero_code
                + self.adc_offset_codes
                + (i + self.rng.gauss(0.0, self.adc_noise_ua)) / fe.adc_ua_per_code
            )
        elif channel_role == "electrode_voltage":
            v = self.v_out_v + self.rng.gauss(0.0, self.v_noise_v)
            code = 2048 + v / fe.electrode_v_per_code
        elif channel_role == "compliance_rail":
            code = self.rail_v / fe.rail_v_per_code + self.rng.gauss(0.0, 0.5)
        elif channel_role == "reference":
            code = fe.reference_code + self.rng.gauss(0.0, 0.5)
        else:
            code = 0.0
        c = int(code + 0.5)
        return 0 if c < 0 else 4095 if c > 4095 else c
