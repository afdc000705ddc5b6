"""Benchmark of the hardware core on the simulated board: ``python -m hw.bench``.

Prints a readable table and, as its last line, one JSON object. Every number is measured here:

- loop timing in REAL time: the runner thread drives the loop at its rate for a few seconds with
  output on (``tick_hz``, ``tick_cost_us_p99`` = CPU inside one tick, ``jitter_us_p99`` = lateness
  of tick starts);
- trip latencies in the BOARD's time (the simulated clock): from the fault's injection until
  output enable is low and DAC A commands zero (for ``deadman``: until the relay opens, since that
  path has no software), worst over several injections at different sub-tick phases;
- regulation error and net DC charge from the plant's ground truth (the current that really flows),
  not from what the loop's ADC reports.

``--quick`` shortens the real-time part (used by the test suite to prove the bench runs).
``--sim-time`` runs the daemons of the daemon figures (and of ``--load``) on ``--sim-time``: their
loop's clock follows its ticks, so a pause of a busy host is not a stall that ends the run. The
test suite uses it (it checks that the bench runs and reports, and holds only board-time figures
to bounds); the figures of record come from a run without it.
``--load`` runs the load benchmark instead (hw/bench/load.py).

This module is the command line, the table and the JSON line with their bounds; the figures are
measured by hw/bench/loop_timing.py, board_figures.py (simulated time), daemon_figures.py and
floods.py (a real daemon process, driven by daemon_driver.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from hw.bench.board_figures import (
    LOADS,
    TRIAL_PHASES,
    TRIP_FAULTS,
    current_channel_stuck,
    dc_balance,
    lift_off_balance,
    regulation,
    trip_latencies,
)
from hw.bench.daemon_driver import SETUP_TRIPS, _run_treatment, spawned_daemon
from hw.bench.daemon_figures import command_to_dac, daemon_process_figures
from hw.bench.floods import (
    FLOOD_IDLE_CONNECTIONS,
    FLOOD_PROGRAM,
    FLOOD_S,
    FLOOD_TREATMENTS,
    FLOODS,
    flood_figures,
    raise_fd_limit,
    run_floods,
    seed_history,
)
from hw.bench.loop_timing import loop_timing, loop_timing_runs
from hw.bench.proctree import host_steal_s, steal_ms_between
from hw.config import load_config

# The names tests and tools import from hw.bench (each lives in the module that measures it).
__all__ = [
    "FLOOD_IDLE_CONNECTIONS",
    "FLOOD_PROGRAM",
    "FLOOD_S",
    "FLOOD_TREATMENTS",
    "FLOODS",
    "LOADS",
    "SETUP_TRIPS",
    "TRIAL_PHASES",
    "TRIP_FAULTS",
    "_run_treatment",
    "command_to_dac",
    "current_channel_stuck",
    "daemon_process_figures",
    "dc_balance",
    "flood_figures",
    "lift_off_balance",
    "loop_timing",
    "loop_timing_runs",
    "main",
    "raise_fd_limit",
    "regulation",
    "run_floods",
    "seed_history",
    "spawned_daemon",
    "trip_latencies",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="site config merged over the defaults")
    ap.add_argument("--seconds", type=float, help="real-time loop run (s; default 5, --load 120)")
    ap.add_argument("--quick", action="store_true", help="1 s real-time run (for tests)")
    ap.add_argument("--load", action="store_true", help="the load benchmark (hw/bench/load.py)")
    ap.add_argument(
        "--sim-time",
        action="store_true",
        help="daemons on --sim-time (for tests: a host pause is no stall; not figures of record)",
    )
    args = ap.parse_args(argv)
    SETUP_TRIPS.clear()
    if args.load:
        from hw.bench.load import run

        return run(args.quick, args.seconds, args.sim_time)
    cfg = load_config(args.config)
    t_start = time.perf_counter()
    steal0 = host_steal_s()
    timing = loop_timing_runs(cfg, 1.0 if args.quick else args.seconds or 5.0)
    steal_timing = host_steal_s()
    trips, how = trip_latencies(cfg)
    reg = regulation(cfg)
    dc = dc_balance(cfg)
    lift_dc = lift_off_balance(cfg, 30.0 if args.quick else 120.0)
    stuck = current_channel_stuck(cfg)
    sim_time = args.sim_time
    proc = daemon_process_figures(
        300 if args.quick else 1000, 1.0 if args.quick else 10.0, sim_time
    )
    c2d = command_to_dac(cfg, 20 if args.quick else 200, sim_time)
    flood = flood_figures(1.0 if args.quick else FLOOD_S, sim_time)
    lease_ms = cfg.limits.lease_ms
    tick_ms = 1000.0 / cfg.loop.rate_hz
    steal1 = host_steal_s()
    steal_ms = steal_ms_between(steal0, steal1)
    steal_timing_ms = steal_ms_between(steal0, steal_timing)

    rows = [
        ("loop rate", f"{timing['tick_hz']:.1f} Hz", ">= 2000"),
        (
            "tick cost p50 / p99",
            f"{timing['tick_cost_us_p50']:.1f} / {timing['tick_cost_us_p99']:.1f} us",
            "p99 <= 125",
        ),
        (
            "tick cost, loop's own (plant excluded)",
            f"{timing['tick_cost_loop_us_p50']:.1f} / {timing['tick_cost_loop_us_p99']:.1f} us",
            "p99 <= 40",
        ),
        (
            "tick lateness p50 / p99 / max",
            f"{timing['jitter_us_p50']:.1f} / "
            f"{timing['jitter_us_p99']:.1f} / {timing['jitter_us_max']:.0f} us",
            "p99 <= 100",
        ),
        ("overruns", f"{timing['overruns']} of {timing['ticks']} ticks", ""),
        ("scheduling", timing["scheduling"], ""),
        (
            "host CPU steal (loop run / whole bench)",
            "not reported"
            if steal_ms is None or steal_timing_ms is None
            else f"{steal_timing_ms:.0f} / {steal_ms:.0f} ms (the hypervisor's, all CPUs)",
            "",
        ),
    ]
    for trip in timing["tripped_runs"]:
        rows.append(("real-time run TRIPPED (run again)", trip, "should not happen"))
    for key, (_f, bound) in TRIP_FAULTS.items():
        b = bound if bound is not None else lease_ms + tick_ms
        rows.append((f"trip {key}", f"{trips[key]:.3f} ms ({how[key]})", f"<= {b:g}"))
    for name, v in reg.items():
        rows.append((f"regulation {name}", f"{v:.2f} %", "<= 2 (or 5 uA)"))
    for name, v in dc.items():
        rows.append((f"net DC {name}", f"{v:.3f} %", "<= 1"))
    rows.append(
        (
            "net DC full-face forehead, lift-offs",
            f"{lift_dc['pct']:.3f} % ({lift_dc['lifts']} lifts, "
            f"{lift_dc['delivered_uc']:.0f} uC, trip {lift_dc['tripped']})",
            "<= 1, no trip",
        )
    )
    for name, (ms, code) in stuck.items():
        rows.append((f"current channel stuck {name}", f"{ms:.1f} ms ({code})", "<= 10"))
    rows += [
        (
            "IPC round trip p50 / p99",
            f"{proc['ipc_rtt_ms_p50']:.3f} / {proc['ipc_rtt_ms_p99']:.3f} ms",
            "p99 <= 2",
        ),
        (
            "level change to DAC p50 / p99",
            f"{c2d['command_to_dac_ms_p50']:.3f} / {c2d['command_to_dac_ms_p99']:.3f} ms",
            "p99 <= 20",
        ),
        (
            "channel command round trip p50 / p99",
            f"{c2d['channel_rtt_ms_p50']:.3f} / {c2d['channel_rtt_ms_p99']:.3f} ms",
            "",
        ),
        (
            "state age seen by the service p50 / p99",
            f"{c2d['state_age_ms_p50']:.3f} / {c2d['state_age_ms_p99']:.3f} ms",
            "",
        ),
        (
            "daemon RSS (service + real-time)",
            f"{proc['daemon_rss_mb']:.1f} MB ({proc['daemon_rss_service_mb']:.1f} + "
            f"{proc['daemon_rss_rt_mb']:.1f}; state {proc['daemon_state']}"
            + (f", TRIPPED {proc['daemon_fault']}" if proc["daemon_fault"] else "")
            + ")",
            "<= 60",
        ),
        ("daemon CPU, output off", f"{proc['daemon_cpu_idle_pct']:.1f} % of one core", "<= 10"),
        ("daemon CPU, treating", f"{proc['daemon_cpu_treating_pct']:.1f} % of one core", "<= 50"),
        (
            "lease round trip under floods (max)",
            f"{flood['flood_lease_rtt_ms_max']:.1f} ms"
            + ("" if all(flood["flood_survived"].values()) else " TREATMENT ENDED"),
            "<= 50, treatment survives",
        ),
    ]
    for kind, ms in flood["flood_worst_ms"].items():
        ok = "" if flood["flood_survived"][kind] else f" ENDED {flood['flood_faults'].get(kind)}"
        rows.append((f"  flood {kind}", f"{ms:.1f} ms{ok}", ""))
    for trip in SETUP_TRIPS:
        rows.append(("trip while setting a measurement up", trip, "should not happen"))
    if sim_time:
        rows.append(("daemons on --sim-time", "yes: not figures of record", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':<44}  bound")
    print("-" * (width + 60))
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:<44}  {c}")
    print(f"(bench took {time.perf_counter() - t_start:.1f} s)")

    result = {
        "tick_hz": round(timing["tick_hz"], 1),
        "tick_cost_us_p99": round(timing["tick_cost_us_p99"], 1),
        "tick_cost_loop_us_p99": round(timing["tick_cost_loop_us_p99"], 1),
        "jitter_us_p99": round(timing["jitter_us_p99"], 1),
        "trip_ms": {k: round(v, 3) for k, v in trips.items()},
        "lease_ms": lease_ms,
        "regulation_error_pct": {k: round(v, 3) for k, v in reg.items()},
        "dc_net_charge_pct": round(max(dc.values()), 4),
        "lift_off_net_dc_pct": round(lift_dc["pct"], 4),
        "lift_off_trips": lift_dc["tripped"],
        "adc_current_stuck_ms": round(max(ms for ms, _ in stuck.values()), 2),
        "ipc_rtt_ms_p99": round(proc["ipc_rtt_ms_p99"], 3),
        "command_to_dac_ms_p99": round(c2d["command_to_dac_ms_p99"], 3),
        "daemon_rss_mb": round(proc["daemon_rss_mb"], 1),
        "daemon_cpu_idle_pct": round(proc["daemon_cpu_idle_pct"], 1),
        "daemon_cpu_treating_pct": round(proc["daemon_cpu_treating_pct"], 1),
        "daemon_rss_service_mb": round(proc["daemon_rss_service_mb"], 1),
        "daemon_rss_rt_mb": round(proc["daemon_rss_rt_mb"], 1),
        "channel_rtt_ms_p50": round(c2d["channel_rtt_ms_p50"], 3),
        "channel_rtt_ms_p99": round(c2d["channel_rtt_ms_p99"], 3),
        "state_age_ms_p99": round(c2d["state_age_ms_p99"], 3),
        "flood_lease_rtt_ms_max": round(flood["flood_lease_rtt_ms_max"], 3),
        "flood_treatment_survived": all(flood["flood_survived"].values()),
    }
    if timing["tripped_runs"]:
        result["realtime_tripped_runs"] = timing["tripped_runs"]
    if timing["tripped"]:
        result["realtime_tripped"] = timing["tripped"]  # the run the figures come from
    if steal_ms is not None and steal_timing_ms is not None:
        result["host_steal_ms"] = round(steal_ms, 1)
        result["host_steal_loop_run_ms"] = round(steal_timing_ms, 1)
    if proc["daemon_fault"]:
        result["daemon_tripped"] = proc["daemon_fault"]
    if sim_time:
        result["daemons_on_sim_time"] = True  # not figures of record (see --sim-time)
    if SETUP_TRIPS:
        result["setup_trips"] = list(SETUP_TRIPS)
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return 0
