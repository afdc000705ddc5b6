"""Figures of the simulated board in the BOARD's time (part of ``python -m hw.bench``).

- trip latencies: from the fault's injection until output enable is low and DAC A commands zero
  (for ``deadman``: until the relay opens, since that path has no software), worst over several
  injections at different sub-tick phases;
- regulation error and net DC charge from the plant's ground truth (the current that really
  flows), not from what the loop's ADC reports;
- the time to the cut when the current channel alone freezes.
"""

from __future__ import annotations

import statistics

from hw.config import Config
from hw.control.loop import OutputState
from hw.control.waveform import WaveformSpec
from hw.hal.sim.plant import SKIN, Load
from hw.hal.sim.rig import SimRig, lift_pattern

TRIAL_PHASES = (0.0, 0.13, 0.37, 0.61, 0.89)  # sub-tick offsets of the injection, in ticks


# --------------------------------------------------------------------------- trip latencies
def _running_rig(cfg: Config, seed: int, target_ua: float = 200.0) -> SimRig:
    rig = SimRig(cfg, seed=seed)
    result = rig.post()
    if not result["passed"]:
        raise RuntimeError(f"self-test failed: {result}")
    # A gapless waveform: lift-off and open circuit are only visible while current is driven.
    rig.start(target_ua, WaveformSpec(25.0, 20.0))
    rig.keep_lease(0.2)
    return rig


def _trip_once(cfg: Config, fault: str, phase: float, seed: int) -> tuple[float, str]:
    rig = _running_rig(cfg, seed)
    lease_kept = fault != "lease_expired"
    tick = rig.tick_s
    rig.clock.advance(phase * tick)  # inject between ticks, at varied sub-tick phases
    t0 = rig.clock.now()
    if fault == "loop_stall":
        rig.loop_stalled = True
    elif fault == "deadman":
        rig.all_stalled = True  # the whole process frozen: only the monostable can act
    elif fault == "estop_screen":
        rig.loop.estop()
    elif fault == "lease_expired":
        # t0 is the last renewal: the lease runs out lease_ms after it.
        rig.loop.renew_lease()
        rig.step()
        t0 = rig.clock.now()  # the renewal was applied in that tick, at this time
    else:
        rig.sim.inject(fault)
    deadline = t0 + 1.0
    how = ""
    while rig.clock.now() < deadline:
        if lease_kept and rig.loop.ticks % 200 == 0:
            rig.loop.renew_lease()
        rig.step()
        if fault == "deadman":
            if not rig.sim.relay_closed:
                how = "relay open"
                break
        elif fault == "lift_off":
            # Not a trip: the DAC drops the current to zero; the relay stays closed for probing.
            if rig.loop.state == OutputState.LIFTED and abs(rig.sim.plant.dac_target_ua) < 1.0:
                how = "lifted, DAC at zero"
                break
        else:
            cut = rig.sim.output_cut_at()
            if cut is not None and cut >= t0:
                how = str(rig.guard.fault.code) if rig.guard.fault else str(rig.loop.state)
                break
    if fault == "deadman":
        t_cut = rig.sim.t_relay_open
    elif fault == "lift_off":
        t_cut = rig.sim.t_dac_zero if how else None
    else:
        t_cut = rig.sim.output_cut_at()
    rig.close()
    if not how or t_cut is None:
        return float("inf"), "no cut within 1 s"
    return (t_cut - t0) * 1000.0, how


TRIP_FAULTS = {
    # bench key: (how it is injected, bound in ms)
    "overcurrent": ("overcurrent", 0.5),
    "spi_error": ("spi_error", 0.5),
    "estop": ("estop", 0.5),
    "adc_stuck": ("adc_stuck", 10.0),
    "open_circuit": ("open_circuit", 20.0),
    "lift_off": ("lift_off", 20.0),
    "loop_stall": ("loop_stall", 20.0),
    "deadman": ("deadman", 50.0),
    "charger": ("charger", 0.5),
    "lease_expired": ("lease_expired", None),
}


def trip_latencies(cfg: Config) -> tuple[dict, dict]:
    worst: dict[str, float] = {}
    detail: dict[str, str] = {}
    for key, (fault, _bound) in TRIP_FAULTS.items():
        results = [
            _trip_once(cfg, fault, phase, seed=11 + i) for i, phase in enumerate(TRIAL_PHASES)
        ]
        worst[key] = max(r[0] for r in results)
        detail[key] = sorted({r[1] for r in results})[0]
    return worst, detail


# --------------------------------------------------------------------------- regulation
LOADS = {
    "500": Load.resistor(500.0),
    "2000": Load.resistor(2000.0),
    "10000": Load.resistor(10000.0),
    "skin": SKIN,
}


def regulation(cfg: Config) -> dict:
    out: dict[str, float] = {}
    for name, load in LOADS.items():
        worst = 0.0
        for setpoint in (100.0, 200.0, 400.0):
            rig = SimRig(cfg, seed=int(setpoint) + len(name))
            rig.sim.set_load(load)
            if not rig.post()["passed"]:
                raise RuntimeError("self-test failed")
            rig.start(setpoint, WaveformSpec(50.0, 10.0))
            rig.keep_lease(0.5)  # let the per-polarity correction settle
            samples: dict[float, list[float]] = {1.0: [], -1.0: []}
            prev_cmd = [0.0, 0.0]

            def sample(r: SimRig, samples=samples, prev_cmd=prev_cmd) -> None:
                cmd = r.loop._cmd_prev
                # Settled plateau: the command has had the same sign for two ticks.
                if cmd and prev_cmd[0] and (cmd > 0) == (prev_cmd[0] > 0) == (prev_cmd[1] > 0):
                    samples[1.0 if cmd > 0 else -1.0].append(r.sim.plant.i_load_ua)
                prev_cmd[1], prev_cmd[0] = prev_cmd[0], cmd

            rig.on_tick = sample
            rig.keep_lease(1.0)
            rig.on_tick = None
            if rig.guard.fault or rig.loop.state != OutputState.ON:
                raise RuntimeError(f"regulation run on {name} ended in {rig.loop.state}")
            for sign, vals in samples.items():
                err = abs(statistics.fmean(vals) - sign * setpoint)
                worst = max(worst, 100.0 * err / setpoint)
            rig.close()
        out[name] = worst
    return out


# --------------------------------------------------------------------------- net DC charge
def dc_balance(cfg: Config) -> dict:
    """Net DC charge of whole treatments, in % of the charge delivered (plant ground truth)."""
    results = {}
    for name, spec, level_ua, seconds, lift in (
        ("demo 10 Hz/40 ms, with a lift-off", WaveformSpec(10.0, 40.0), 160.0, 30.0, True),
        ("full-face 0.5 Hz/500 ms", WaveformSpec(0.5, 500.0), 320.0, 60.0, False),
        ("quick-tone 1 Hz/250 ms, with a lift-off", WaveformSpec(1.0, 250.0), 280.0, 40.0, True),
    ):
        rig = SimRig(cfg, seed=5)
        if not rig.post()["passed"]:
            raise RuntimeError("self-test failed")
        q0_net, q0_abs = rig.sim.plant.q_net_uc, rig.sim.plant.q_abs_uc
        rig.loop.start(spec, level_ua)
        rig.keep_lease(seconds / 2)
        if lift:
            rig.sim.inject("lift_off")
            rig.keep_lease(0.7)
            rig.sim.clear("lift_off")
        rig.keep_lease(seconds / 2)
        rig.loop.stop()
        rig.keep_lease(1.0)
        if rig.guard.fault:
            raise RuntimeError(f"DC run {name} tripped: {rig.guard.fault}")
        net = rig.sim.plant.q_net_uc - q0_net
        delivered = rig.sim.plant.q_abs_uc - q0_abs
        results[name] = 100.0 * abs(net) / delivered
        rig.close()
    return results


def lift_off_balance(cfg: Config, seconds: float = 120.0, seed: int = 7) -> dict:
    """The full-face program's forehead step (its highest level) with a person lifting the
    electrodes as its text says: contact 1.5-4 s, lifted 0.2-1 s, again and again. True net DC
    charge in % of the charge delivered (plant ground truth), and whether anything tripped."""
    from hw.control.levels import level_to_ua

    step = cfg.program("full-face-lift").steps[0]
    spec = WaveformSpec(step.frequency_hz, step.pulse_width_ms)
    target = level_to_ua(step.max_level, cfg.limits, step.max_level)
    rig = SimRig(cfg, seed=seed)
    try:
        if not rig.post()["passed"]:
            raise RuntimeError("self-test failed")
        q0_net, q0_abs = rig.sim.plant.q_net_uc, rig.sim.plant.q_abs_uc
        rig.loop.start(spec, target)
        lifts = lift_pattern(rig, seconds, seed)
        # The program ends on its timer, and its timers run only with contact: let the last
        # re-contact (and its balance) happen, then the balanced stop.
        for _ in range(100):
            if rig.loop.state in (OutputState.RAMP_UP, OutputState.ON) or rig.guard.tripped:
                break
            rig.keep_lease(0.1)
        peak_loop_net = abs(rig.loop.q_net_uc)
        rig.loop.stop()
        rig.keep_lease(2.0)
        net = rig.sim.plant.q_net_uc - q0_net
        delivered = rig.sim.plant.q_abs_uc - q0_abs
        fault = rig.guard.fault
        return {
            "pct": 100.0 * abs(net) / delivered if delivered else float("nan"),
            "lifts": lifts,
            "delivered_uc": delivered,
            "net_uc": net,
            "loop_net_uc_end": peak_loop_net,
            "tripped": str(fault.code) if fault else None,
        }
    finally:
        rig.close()


def current_channel_stuck(cfg: Config) -> dict:
    """Time from the current channel freezing alone (the other channels live) to the cut, worst
    over every shipped waveform and several points of its period, in board time (ms)."""
    specs = sorted({(s.frequency_hz, s.pulse_width_ms) for p in cfg.programs for s in p.steps})
    worst: dict = {}
    for f_hz, pw_ms in specs:
        spec = WaveformSpec(f_hz, pw_ms)
        for frac in (0.05, 0.3, 0.6, 0.9):
            rig = SimRig(cfg, seed=11)
            try:
                if not rig.post()["passed"]:
                    raise RuntimeError("self-test failed")
                rig.loop.start(spec, 160.0)
                rig.run_leased_until(lambda r=rig: r.loop.state == OutputState.ON, 5.0)
                w = rig.loop.wave
                at = int(frac * w.period_ticks)
                rig.run_leased_until(lambda w=w, at=at: w.t == at, 5.0 / f_hz)
                t0 = rig.clock.now()
                rig.sim.inject("adc_current_stuck")
                rig.run_leased_until(lambda r=rig: r.guard.tripped, 1.0)
                cut = rig.sim.output_cut_at()
                ms = (cut - t0) * 1000.0 if cut is not None else float("inf")
                key = f"{f_hz:g} Hz/{pw_ms:g} ms"
                code = str(rig.guard.fault.code) if rig.guard.fault else "none"
                if ms > worst.get(key, (-1.0, ""))[0]:
                    worst[key] = (ms, code)
            finally:
                rig.close()
    return worst
