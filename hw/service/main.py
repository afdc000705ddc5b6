"""``python -m hw [--config PATH] [--sim] [--socket PATH] [--state-dir DIR]``: the daemon's start.

Start-up: config (a bad one exits with code 2 before any hardware is touched), socket lock (exit 5
when another daemon holds it), the real-time process (its board: output enable low at
construction; exit 3 without one), history (damaged files set aside; interrupted treatments closed
and latched as a fault to acknowledge; exit 4 when it cannot be used), self-test, READY=1 (the
Daemon, hw/service/daemon.py). Nothing resumes a treatment after a restart. SIGTERM/SIGINT cut the
output (a trip if it was on), stop the real-time process and exit with the output off; the
real-time process lost makes this process exit 1 (systemd restarts the unit).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from hw.clock import MonotonicClock
from hw.config import ConfigError, load_config
from hw.config.boardfile import board_path_for
from hw.control.loop import ACTIVE
from hw.history import HistoryError
from hw.journal import setup_logging
from hw.safety import Fault
from hw.service.daemon import Daemon
from hw.service.socketlock import SocketInUse, acquire_socket_lock

log = logging.getLogger("hw")

# The service stays in the normal scheduling class (it shares no GIL with the loop any more), with
# a heavier CFS weight: the lease and the engine heartbeat pass through it, and a busy kiosk or a
# flood of clients at nice 0 must not hold it off the CPU for 100s of ms (seen at nice 0 on the
# loaded 2-core development machine). Needs RLIMIT_NICE (the unit's LimitNICE=); refused: logged.
SERVICE_NICE = -10


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw", description="microcurrent-kiosk hw daemon")
    ap.add_argument("--config", help="site YAML merged over the packaged defaults (or MCK_CONFIG)")
    ap.add_argument("--sim", action="store_true", help="use the simulated board (desktop, tests)")
    ap.add_argument(
        "--board",
        help="board file from `python -m hw.calibrate` (or MCK_BOARD; default "
        "/etc/microcurrent-kiosk/board.yaml, with --sim the packaged simulated board)",
    )
    ap.add_argument("--socket", default=os.environ.get("MCK_SOCKET", "/run/microcurrent/hw.sock"))
    ap.add_argument(
        "--state-dir", default=os.environ.get("MCK_STATE_DIR", "/var/lib/microcurrent-kiosk")
    )
    ap.add_argument("--sim-mirror", help="(sim) mirror the board's pins into this file")
    ap.add_argument(
        "--sim-time",
        action="store_true",
        help="(sim, tests) the loop's clock moves with its ticks, so a pause of the host is no "
        "stall (hw.clock.TickClock); refused without --sim",
    )
    args = ap.parse_args(argv)
    setup_logging(sys.stdout)  # <N> priority prefixes when stdout is the journal
    from hw.service.notify import Notifier

    notifier = Notifier()
    if args.sim_time and not args.sim:
        log.error("CONFIG --sim-time is for the simulated board only (--sim): no output")
        notifier.status("config error: no output")
        return 2
    try:
        cfg = load_config(args.config, board_path=board_path_for(args.board, sim=args.sim))
    except ConfigError as e:
        for p in e.problems:
            log.error("CONFIG %s", p)
        log.error("CONFIG invalid: no output; fix the file(s) named above")
        notifier.status("config error: no output")
        return 2
    try:  # before the board: a second daemon must not touch the pins either
        lock_fd = acquire_socket_lock(Path(args.socket))
    except (SocketInUse, OSError) as e:
        log.error("SOCKET %s", e)
        return 5
    try:
        os.setpriority(os.PRIO_PROCESS, 0, SERVICE_NICE)
        log.info("service: nice %d", os.getpriority(os.PRIO_PROCESS, 0))
    except OSError as e:
        log.warning("service: nice %d refused (%s); running at nice 0", SERVICE_NICE, e)
    clock = MonotonicClock()
    state_dir = Path(args.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.error("STATE cannot use %s: %s", state_dir, e)
        return 4
    # The board, the loop, the guard and the supervisor live in the real-time process
    # (hw/control/rt.py); it holds the socket lock too, so no second daemon starts while it lives.
    from hw.service.rtlink import RealtimeUnavailable, spawn_realtime

    try:
        rt = spawn_realtime(
            cfg,
            site_config=args.config or os.environ.get("MCK_CONFIG"),
            board_path=str(board_path_for(args.board, sim=args.sim)),
            sim=args.sim,
            sim_mirror=args.sim_mirror,
            keep_fds=(lock_fd,),
            sim_time=args.sim_time,
        )
    except RealtimeUnavailable as e:
        log.error("REALTIME %s", e)
        return e.exit_code
    log.info("REALTIME process pid=%d: %s", rt.rt_pid, rt.sched_note)
    daemon = Daemon(cfg, None, clock, Path(args.socket), state_dir, notifier, rt=rt)
    daemon.socket_lock_fd = lock_fd

    def on_signal(signum, _frame) -> None:
        log.info("SIGNAL %s: output off, stopping", signal.Signals(signum).name)
        if daemon.loop.state in ACTIVE:
            rt.trip_nowait(Fault.SHUTDOWN, f"signal {signal.Signals(signum).name}")
        # From now on the real-time process ending is expected (a terminal's or a cgroup's
        # signal may reach it too), not a loss that exits 1.
        rt.stopping = True
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start_hardware()
        asyncio.run(daemon.serve())
    except HistoryError as e:
        log.error("HISTORY %s", e)
        return 4
    finally:
        daemon.shutdown()
    return daemon.exit_code
