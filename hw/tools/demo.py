"""A program on the simulated board in real time, with a live status line: ``python -m hw.demo``.

The hardware core alone (no daemon, no socket): self-test, then each step of a program at a fixed
level, the lease renewed as a kiosk would, timers paused while the electrodes are lifted. Ctrl-C
ramps the output down and leaves it off.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from hw.clock import MonotonicClock
from hw.config import ConfigError, load_config
from hw.control.levels import level_to_ua
from hw.control.loop import ControlLoop, OutputState
from hw.control.runner import LoopRunner
from hw.control.waveform import WaveformSpec
from hw.hal.board import build_sim_board
from hw.safety import Guard
from hw.safety.supervisor import Supervisor


def _line(loop: ControlLoop, level: int, zone: str, left_s: float) -> str:
    s = loop.snapshot
    z = f"{s.impedance_ohm / 1000:5.1f} kOhm" if s.impedance_ohm else "   -- kOhm"
    fault = f" | FAULT {s.fault['code']}" if s.fault else ""
    return (
        f"{s.state:9} | level {level:2d} | set {s.amplitude_ua:5.1f} uA | "
        f"meas {s.measured_ua:5.1f} uA | {z} | contact {s.contact_quality_pct:3.0f} % | "
        f"{zone:8} | {left_s:5.1f} s left{fault}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--program", default="demo")
    ap.add_argument("--level", type=int, default=4)
    ap.add_argument("--lift-at", type=float, default=None, help="lift the electrodes at S seconds")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        program = cfg.program(args.program)
    except ConfigError as e:
        print(f"config error, no output:\n{e}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"no program {args.program!r}", file=sys.stderr)
        return 2
    clock = MonotonicClock()
    board = build_sim_board(cfg, clock)
    guard = Guard(board, clock)
    loop = ControlLoop(cfg, board, clock, guard)
    runner, sup = LoopRunner(loop), Supervisor(loop, clock)
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    runner.start()
    sup.start()
    tty = sys.stdout.isatty()
    try:
        loop.run_post()
        while loop.post_result is None:
            time.sleep(0.01)
        print(f"self-test: {'passed' if loop.post_result['passed'] else loop.post_result}")
        if not loop.post_result["passed"]:
            return 1
        started = False
        t_run0 = time.monotonic()
        for step in program.steps:
            level = min(args.level, step.max_level)
            spec = WaveformSpec(step.frequency_hz, step.pulse_width_ms)
            ua = level_to_ua(level, cfg.limits, step.max_level)
            if not started:
                loop.start(spec, ua)
                started = True
            else:
                loop.set_waveform(spec)
                loop.set_target(ua)
            left = step.duration_s
            last = time.monotonic()
            while left > 0 and not stop["now"] and not guard.tripped:
                time.sleep(0.1)
                loop.renew_lease()
                now = time.monotonic()
                if args.lift_at is not None and now - t_run0 >= args.lift_at:
                    board.sim.inject("lift_off")
                    args.lift_at = None
                    lift_clear = now + 2.0
                if board.sim.active_faults and "lift_off" in board.sim.active_faults:
                    if now >= lift_clear:
                        board.sim.clear("lift_off")
                if loop.state in (OutputState.RAMP_UP, OutputState.ON):
                    left -= now - last  # timers pause while lifted
                last = now
                text = _line(loop, level, step.zone, max(0.0, left))
                print(("\r" + text) if tty else text, end="" if tty else "\n", flush=True)
            if stop["now"] or guard.tripped:
                break
        print()
        if guard.tripped:
            print(f"tripped: {guard.fault.code}: {guard.fault.message} ({guard.fault.detail})")
        loop.stop()
        deadline = time.monotonic() + 3.0
        while loop.state not in (OutputState.OFF, OutputState.TRIPPED):
            if time.monotonic() > deadline:
                break
            loop.renew_lease()
            time.sleep(0.05)
        return 1 if guard.tripped else 0
    finally:
        runner.stop()
        sup.stop()
        board.close()
        print(
            f"output off (enable {'high' if board.sim.enable_high else 'low'}, "
            f"relay {'closed' if board.sim.plant.relay_closed else 'open'})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
