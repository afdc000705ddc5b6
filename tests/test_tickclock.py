"""``--sim-time`` (hw.clock.TickClock): the loop's runner moves the simulated board's clock once a
tick, never by more than the step it scheduled. A pause of the host (the loop's thread held off its
CPU) is then no gap in the loop's time, while a hung loop (``inject_stall``) still trips. The
daemon tests run on it (tests/daemon_helpers.py); the appliance never does.

The in-process tests run the real runner on its own thread in real time: they hold the thread as
a host would and judge the outcome (tripped or not, which fault), never how long anything took.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from daemon_helpers import REPO, subprocess_env

from hw.clock import TickClock
from hw.config import load_config
from hw.control.loop import ControlLoop, OutputState
from hw.control.runner import LoopRunner
from hw.control.waveform import WaveformSpec
from hw.hal.board import build_sim_board
from hw.safety import Fault, Guard
from hw.safety.supervisor import Supervisor

BOUND_S = 10.0  # an upper bound for a step to happen at all, never a measurement


def test_a_tick_clock_moves_only_forward_and_only_when_told():
    c = TickClock(start_s=5.0)
    assert c.now() == c.now() == 5.0
    c.advance(0.0005)
    assert c.now() == pytest.approx(5.0005)
    with pytest.raises(ValueError):
        c.advance(-1e-6)
    assert TickClock().now() == pytest.approx(time.monotonic(), abs=1.0)  # starts near real time


class _Core:
    """The real-time process's core in-process (as hw/control/rt.py builds it) on ``clock``."""

    def __init__(self, clock):
        self.cfg = load_config(env={})
        self.clock = clock
        self.board = build_sim_board(self.cfg, clock, seed=1)
        self.guard = Guard(self.board, clock)
        self.loop = ControlLoop(self.cfg, self.board, clock, self.guard)
        self.supervisor = Supervisor(self.loop, clock)
        self.hold_s = 0.0  # the next tick's thread is held this long before it runs (a host pause)
        self.held = threading.Event()
        self.runner = LoopRunner(
            self.loop,
            stats_size=1000,
            before_tick=self._before_tick,
            tick_clock=clock if isinstance(clock, TickClock) else None,
        )
        self._stop = threading.Event()
        self._kiosk = threading.Thread(target=self._renew, daemon=True)

    def _before_tick(self) -> None:
        if self.hold_s:
            s, self.hold_s = self.hold_s, 0.0
            time.sleep(s)  # the thread does not run: to the loop, a stolen CPU looks just so
            self.held.set()

    def _renew(self) -> None:  # a live kiosk and a live engine
        while not self._stop.wait(0.05):
            self.loop.renew_lease()
            self.loop.service_beat()

    def until(self, pred, what: str) -> None:
        deadline = time.monotonic() + BOUND_S
        while not pred():
            assert time.monotonic() < deadline, (what, self.loop.state, self.guard.fault)
            time.sleep(0.01)

    def __enter__(self):
        self.runner.start()
        self.supervisor.start()
        self._kiosk.start()
        self.loop.run_post()
        self.until(lambda: self.loop.post_result is not None, "self-test done")
        assert self.loop.post_result["passed"], self.loop.post_result
        self.loop.service_beat()
        self.loop.start(WaveformSpec(50.0, 10.0), 200.0)
        self.until(lambda: self.loop.state == OutputState.ON, "output on")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._kiosk.join(2.0)
        self.runner.stop()
        self.supervisor.stop()
        self.board.close()


def test_a_host_pause_is_no_stall_on_the_tick_clock():
    # On real time the same pause is a blind loop, LOOP_STALL (test_idle: a gap during output is
    # a stall, in simulated time); here the simulated world pauses with the host.
    hold_s = 0.03  # three stall bounds (loop.stall_ms 10)
    with _Core(TickClock()) as core:
        assert hold_s > core.cfg.loop.stall_ms / 1000.0
        t0 = core.clock.now()
        core.hold_s = hold_s
        core.until(core.held.is_set, "the thread was held")
        time.sleep(0.2)  # ticks on, the lease renewed
        assert core.guard.fault is None, core.guard.fault
        assert core.loop.state == OutputState.ON
        assert core.loop.gap_max_s <= core.loop.tick_s + 1e-9  # no gap beyond one step
        # The simulated world lost the pause: less time passed in it than in real time.
        assert core.clock.now() - t0 < hold_s + 0.2


def test_an_injected_hang_still_trips_on_the_tick_clock():
    with _Core(TickClock()) as core:
        core.runner.inject_stall(0.03)
        core.until(lambda: core.guard.tripped, "the hang was seen")
        assert core.guard.fault.code == Fault.LOOP_STALL, core.guard.fault
        assert core.board.sim.plant.enable is False  # cut


@pytest.mark.parametrize("module", ["hw", "hw.control.rt"])
def test_sim_time_is_refused_without_the_simulated_board(tmp_path, module):
    argv = [sys.executable, "-m", module, "--sim-time", "--config", str(tmp_path / "none.yaml")]
    if module == "hw":
        argv += ["--socket", str(tmp_path / "hw.sock"), "--state-dir", str(tmp_path / "state")]
    else:
        argv += ["--channel-fd", "0"]
    p = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env=subprocess_env(), cwd=REPO
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "--sim-time is for the simulated board only" in p.stdout + p.stderr
    assert not (tmp_path / "hw.sock").exists()


@pytest.mark.parametrize("realtime", [False, True], ids=["sim-time", "real-time"])
def test_a_daemon_on_sim_time_rides_through_its_processes_being_stopped(tmp_path, realtime):
    """The host pauses both of the daemon's processes (SIGSTOP, 50 ms: five stall bounds) again
    and again mid-treatment, as a hypervisor that takes the VM's CPUs does. On --sim-time the
    treatment runs on with no fault. On real time, as on the appliance, such a pause is a blind
    loop and trips LOOP_STALL (with such pauses beside them the demo test and the kiosk's
    end-to-end test failed on f76d34c, the latter as it did on CI)."""
    import os
    import signal

    from daemon_helpers import (
        DaemonFactory,
        HostTimingFault,
        check_timing,
        expect_ready,
        start_treatment,
    )

    with DaemonFactory(tmp_path) as daemons:
        d = daemons.start(realtime=realtime)
        expect_ready(d)
        c = d.client("kiosk")
        try:
            start_treatment(c, "demo")
        except HostTimingFault:
            assert realtime  # (the host paused it already, before the test did)
        pids = (d.proc.pid, d.rt_pid)
        for _ in range(5):
            c.request("lease")
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(0.05)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            c.request("lease")
            time.sleep(0.1)
        st = c.request("status")
        if realtime:
            assert st["fault"] is not None and st["fault"]["code"] == "LOOP_STALL", st
            assert st["output"] == "tripped" and d.mirror()["enable"] is False, st
        else:
            check_timing(st)
            assert st["state"] == "running" and st["fault"] is None, st
            assert d.mirror()["enable"] is True
