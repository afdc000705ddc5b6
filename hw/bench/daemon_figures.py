"""Figures of a real daemon (part of ``python -m hw.bench``): the socket round trip, the memory
and CPU of its processes, and the time from a level change on the socket to the DAC write.
"""

from __future__ import annotations

import time

from hw.bench.daemon_driver import _rss_kb, _run_treatment, spawned_daemon
from hw.bench.stats import pct as _pct
from hw.config import Config


def daemon_process_figures(rtt_requests: int, cpu_s: float = 10.0, sim_time: bool = False) -> dict:
    """IPC round trip and memory of a real daemon process running a treatment, and the CPU the
    daemon and its child processes use over ``cpu_s`` with the output off, then treating
    (``sim_time``: the daemon's loop on --sim-time, see daemon_driver.spawned_daemon)."""
    import tempfile

    from hw.bench import proctree
    from hw.bench.proctree import tree_cpu_pct

    with tempfile.TemporaryDirectory() as tmp:
        with spawned_daemon(tmp, sim_time=sim_time) as (proc, _sock, c):
            cpu_idle = tree_cpu_pct(proc.pid, cpu_s)
            _run_treatment(c)
            # The kiosk's own load while treating: a renewal every 100 ms, nothing else.
            cpu_treating = tree_cpu_pct(proc.pid, cpu_s, every_s=0.1, do=lambda: c.request("lease"))
            rtt = []
            next_lease = 0.0
            for _ in range(rtt_requests):
                if time.monotonic() >= next_lease:
                    c.request("lease")
                    next_lease = time.monotonic() + 0.1
                t0 = time.perf_counter()
                c.request("status")
                rtt.append((time.perf_counter() - t0) * 1000.0)
            status = c.request("status")
            # Both processes of the daemon: the service and its real-time child (hw.control.rt).
            rss_service_kb = _rss_kb(proc.pid)
            rss_rt_kb = sum(_rss_kb(pid) for pid in proctree.tree(proc.pid) if pid != proc.pid)
            if status["state"] in ("contact_check", "ramp_up", "running", "paused"):
                c.request("stop")
            fault = status.get("fault") or {}
            return {
                "daemon_fault": f"{fault['code']}: {fault.get('detail')}" if fault else None,
                "ipc_rtt_ms_p50": _pct(rtt, 0.5),
                "ipc_rtt_ms_p99": _pct(rtt, 0.99),
                "daemon_rss_mb": (rss_service_kb + rss_rt_kb) / 1024.0,
                "daemon_rss_service_mb": rss_service_kb / 1024.0,
                "daemon_rss_rt_mb": rss_rt_kb / 1024.0,
                "daemon_state": status["state"],
                "daemon_cpu_idle_pct": cpu_idle,
                "daemon_cpu_treating_pct": cpu_treating,
            }


def command_to_dac(cfg: Config, changes: int, sim_time: bool = False) -> dict:
    """Level change sent over the socket until the loop's DAC write toward the new target.

    The daemon's service runs in this process (its real threads and socket) with its real-time
    process beside it, as ``python -m hw`` runs them; the real-time process stamps its answer on
    CLOCK_MONOTONIC after the tick that applied the change, the clock the client's send time is
    read from. Also the channel's own figures: the command round trip (service -> real-time ->
    answer) and the age of the state the service sees.
    """
    import tempfile
    import threading
    from pathlib import Path

    from hw.clock import MonotonicClock
    from hw.config.boardfile import sim_board_path
    from hw.service.client import Client
    from hw.service.daemon import Daemon
    from hw.service.notify import Notifier
    from hw.service.rtlink import spawn_realtime

    with tempfile.TemporaryDirectory() as tmp:
        clock = MonotonicClock()
        rt = spawn_realtime(
            cfg, site_config=None, board_path=str(sim_board_path()), sim=True, sim_time=sim_time
        )
        d = Daemon(cfg, None, clock, Path(tmp) / "hw.sock", Path(tmp), Notifier(env={}), rt=rt)
        d.start_hardware()
        import asyncio

        ready = threading.Event()
        t = threading.Thread(target=lambda: asyncio.run(d.serve(ready)), daemon=True)
        t.start()
        try:
            if not ready.wait(20):
                raise RuntimeError("the in-process daemon did not become ready")
            c = Client(str(Path(tmp) / "hw.sock"), "bench")
            _run_treatment(c)
            lat = []
            for k in range(changes):
                n0 = len(d.cmd_applied_s)
                t_send = time.monotonic()
                c.request("set_level", level=3 + (k % 2))
                while len(d.cmd_applied_s) == n0:
                    time.sleep(0.0002)
                lat.append((d.cmd_applied_s[-1] - t_send) * 1000.0)
                c.request("lease")
                time.sleep(0.02)
            c.request("stop")
            c.close()
            rtt, age = list(rt.reply_rtt_ms), list(rt.state_age_ms)
            return {
                "command_to_dac_ms_p50": _pct(lat, 0.5),
                "command_to_dac_ms_p99": _pct(lat, 0.99),
                "channel_rtt_ms_p50": _pct(rtt, 0.5),
                "channel_rtt_ms_p99": _pct(rtt, 0.99),
                "state_age_ms_p50": _pct(age, 0.5),
                "state_age_ms_p99": _pct(age, 0.99),
            }
        finally:
            d.request_stop()
            t.join(10)
            d.shutdown()
