"""The loop's timing in REAL time on the simulated board (part of ``python -m hw.bench``).

The runner thread drives the loop at its rate for a few seconds with output on: tick rate, CPU
inside one tick (whole, and the loop's own work with the simulated plant's time taken out), and
the lateness of tick starts, in microseconds.
"""

from __future__ import annotations

import time

from hw.bench.stats import pct as _pct
from hw.config import Config
from hw.control.waveform import WaveformSpec


def loop_timing(cfg: Config, seconds: float) -> dict:
    from hw.clock import MonotonicClock
    from hw.control.loop import ControlLoop
    from hw.control.runner import LoopRunner
    from hw.hal.board import build_sim_board
    from hw.safety import Guard
    from hw.safety.supervisor import Supervisor

    clock = MonotonicClock()
    board = build_sim_board(cfg, clock)
    guard = Guard(board, clock)
    loop = ControlLoop(cfg, board, clock, guard)
    runner = LoopRunner(loop, stats_size=int(seconds * cfg.loop.rate_hz) + 100)
    sup = Supervisor(loop, clock)
    own_us = _time_loop_own_work(loop, board.sim, runner.cost_us.maxlen)
    runner.start()
    sup.start()
    try:
        loop.run_post()
        t_end = time.monotonic() + 3.0
        while loop.post_result is None and time.monotonic() < t_end:
            time.sleep(0.005)
        if not (loop.post_result and loop.post_result["passed"]):
            raise RuntimeError(f"self-test failed in the real-time run: {loop.post_result}")
        loop.start(WaveformSpec(50.0, 10.0), 300.0)
        time.sleep(0.2)
        runner.late_us.clear()
        runner.cost_us.clear()
        own_us.clear()
        t0, n0, o0 = time.perf_counter(), loop.ticks, loop.overruns
        while time.perf_counter() - t0 < seconds:
            loop.renew_lease()
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        ticks = loop.ticks - n0
        # A trip here (a stall on a busy machine) is a finding to report, not a crash.
        tripped = f"{guard.fault.code}: {guard.fault.detail}" if guard.fault else None
        loop.stop()
        time.sleep(0.6)
        return {
            "tick_hz": ticks / elapsed,
            "tick_cost_us_p50": _pct(list(runner.cost_us), 0.50),
            "tick_cost_us_p99": _pct(list(runner.cost_us), 0.99),
            "tick_cost_loop_us_p50": _pct(list(own_us), 0.50),
            "tick_cost_loop_us_p99": _pct(list(own_us), 0.99),
            "jitter_us_p50": _pct(list(runner.late_us), 0.50),
            "jitter_us_p99": _pct(list(runner.late_us), 0.99),
            "jitter_us_max": max(runner.late_us),
            "overruns": loop.overruns - o0,
            "ticks": ticks,
            "seconds": elapsed,
            "scheduling": runner.sched_note,
            "final_state": str(loop.state),
            "tripped": tripped,
        }
    finally:
        runner.stop()
        sup.stop()
        board.close()


def _time_loop_own_work(loop, sim, size: int):
    """Wrap ``loop.tick`` to record, per tick, its wall time (us) minus the time spent inside
    the simulated board (``sim.plant_s``): the loop's own work, as on a Pi minus the SPI."""
    import collections

    own_us: collections.deque[float] = collections.deque(maxlen=size)
    tick, pc = loop.tick, time.perf_counter

    def timed_tick() -> None:
        p0, t0 = sim.plant_s, pc()
        tick()
        own_us.append((pc() - t0 - (sim.plant_s - p0)) * 1e6)

    loop.tick = timed_tick
    return own_us


def loop_timing_runs(cfg: Config, seconds: float, attempts: int = 3) -> dict:
    """:func:`loop_timing` until a run ends without a trip, at most ``attempts`` runs. Every
    tripped run is reported (``tripped_runs``: the trip and the host CPU steal during it), never
    hidden: a tripped run's figures are mostly of the idle pace that follows the trip, so the
    figures come from the first run that kept the output on (or the last one)."""
    from hw.bench.proctree import host_steal_s, steal_ms_between

    tripped: list[str] = []
    for _ in range(attempts):
        s0 = host_steal_s()
        timing = loop_timing(cfg, seconds)
        s1 = host_steal_s()
        if not timing["tripped"]:
            break
        ms = steal_ms_between(s0, s1)
        steal = "?" if ms is None else f"{ms:.0f}"
        tripped.append(f"{timing['tripped']} (host steal {steal} ms in the run)")
    timing["tripped_runs"] = tripped
    return timing
