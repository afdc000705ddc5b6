"""The loop's real-time runner: paces ``ControlLoop.tick()`` at its rate on a thread of its own.

- :class:`LoopRunner`: absolute deadlines, spin to the deadline at the full rate, sleep (no spin,
  the GIL released) at :func:`idle_period_s` while the output is off or tripped;
- :func:`_tune_thread`: timer slack, SCHED_FIFO and a CPU of its own for the loop's thread (also
  used by the supervisor, one priority below).
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hw.clock import TickClock
from hw.config import Config
from hw.control.tickhist import TickHistogram, bin_of
from hw.safety.thresholds import IDLE_PERIOD_MS

if TYPE_CHECKING:
    from hw.control.loop import ControlLoop

_PR_SET_TIMERSLACK = 29


def _tune_thread(priority: int, own_cpu: bool = False) -> str:
    """Ask for 1 ns timer slack and SCHED_FIFO (and, with ``own_cpu``, one CPU: the last one
    allowed); report what the OS granted."""
    notes = []
    # The loop's thread on one CPU: a thread that wakes on whichever core is free pays for cold
    # caches on every tick. Only the loop's: the supervisor must be able to run on another CPU
    # when the loop spins out of control at a higher priority.
    if own_cpu and hasattr(os, "sched_setaffinity"):
        try:
            cpus = os.sched_getaffinity(0)
            if len(cpus) > 1:
                cpu = max(cpus)
                os.sched_setaffinity(0, {cpu})
                notes.append(f"cpu {cpu}")
        except OSError:
            pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0) == 0:
            notes.append("timerslack=1ns")
    except OSError:
        pass
    if priority > 0 and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            notes.append(f"SCHED_FIFO {priority}")
        except (PermissionError, OSError):
            notes.append("best effort (no real-time priority)")
    return ", ".join(notes) or "best effort"


def idle_period_s(cfg: Config) -> float:
    """The runner's period while the output is off or tripped with nothing flowing (s):
    ``IDLE_PERIOD_MS``, never faster than the full rate.

    Why it can be this slow: with the output off, the checks that still run guard nothing that a
    tick could cut. The residual current (a welded relay and a runaway stage) is an alarm that
    tells the person to take the electrodes off, seen within ``RESIDUAL_MS`` plus one idle period,
    and the loop returns to the full rate while it flows; the SPI shutdown re-issue is judged in
    time; the e-stop has nothing to cut. What it saves is measured: on this VM every wake-up of a
    thread costs a few hundred microseconds of CPU (cold caches and the hypervisor's timer), so
    the wake-ups per second, not the tick's work, set the idle daemon's CPU (python -m hw.bench,
    ``daemon_cpu_idle_pct``). A command waits at most one idle period to be applied (the
    in-process runner is woken at once). A stall is judged only across ticks of an output that
    was on, and the watchdog's freshness bounds allow one idle period on top while idle
    (Supervisor.healthy)."""
    return max(1.0 / cfg.loop.rate_hz, IDLE_PERIOD_MS / 1000.0)


class LoopRunner:
    """Runs a ControlLoop at its rate on its own thread, in real time.

    Deadlines are absolute (``next += period``): a late tick does not shift the ones after it, and
    a few missed ticks are caught up back to back, so the average rate stays exact.

    While the output is off or tripped nothing needs 2 kHz: the runner ticks at
    :func:`idle_period_s` and sleeps to each deadline without spinning (time.sleep is
    clock_nanosleep with an absolute deadline, and releases the GIL; a spin does not). A command
    queued meanwhile wakes it at once, and it returns to the full rate on the tick that leaves the
    idle states.
    """

    MAX_CATCH_UP = 4

    def __init__(
        self,
        loop: ControlLoop,
        stats_size: int = 20000,
        before_tick: Callable[[], None] | None = None,
        after_tick: Callable[[], None] | None = None,
        tick_clock: TickClock | None = None,
    ):
        self.loop = loop
        # The loop's clock when it is a TickClock (a test's simulated board, --sim-time): the
        # runner moves it once a tick, by the real time since the previous tick, never more than
        # the scheduled step, so a pause of the host is no gap in the loop's time.
        self.tick_clock = tick_clock
        # Hooks run on the loop's thread around every tick, inside its measured cost: the
        # real-time process drains its command channel before and publishes after.
        self.before_tick = before_tick
        self.after_tick = after_tick
        self.period_s = loop.tick_s
        self.spin_s = loop.cfg.loop.spin_us * 1e-6
        self.late_us: collections.deque[float] = collections.deque(maxlen=stats_size)
        self.cost_us: collections.deque[float] = collections.deque(maxlen=stats_size)
        # Every tick since start, in fixed histograms the loop publishes (status `loop`).
        self.late_hist, self.gap_hist = TickHistogram(), TickHistogram()
        loop.runner_hists = (self.late_hist, self.gap_hist)
        self.sched_note = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stall_s = 0.0
        self.started = threading.Event()
        self.idle_period_s = idle_period_s(loop.cfg)
        self._wake = threading.Event()
        loop.on_command = self._wake.set

    def start(self) -> None:
        # Everything alive now lives for the whole run: move it out of the collector's reach, so a
        # full collection never has to walk it while the loop waits for the GIL.
        gc.collect()
        gc.freeze()
        # The loop waits for the GIL whenever another thread holds it; by default a holder keeps
        # it up to 5 ms. 0.5 ms bounds that wait to one tick (a measured cost: see hw.bench).
        sys.setswitchinterval(0.0005)
        self._thread = threading.Thread(target=self._run, name="current-loop", daemon=True)
        self._thread.start()
        self.started.wait(2.0)

    def inject_stall(self, seconds: float) -> None:
        """Fault injection: the next tick blocks for ``seconds`` (a hung loop; on a TickClock its
        time moves on by as much, so the supervisor and the loop see the stall)."""
        self._stall_s = seconds

    def _run(self) -> None:
        self.sched_note = _tune_thread(self.loop.cfg.loop.realtime_priority, own_cpu=True)
        loop = self.loop
        pc = time.perf_counter
        period, spin, idle_period = self.period_s, self.spin_s, self.idle_period_s
        late, cost = self.late_us, self.cost_us
        wake = self._wake
        tick_clock = self.tick_clock
        step = period  # the step scheduled to the coming tick
        late_n, gap_n = self.late_hist.counts, self.gap_hist.counts
        nxt = pc() + period
        t_prev = nxt - period
        self.started.set()
        while not self._stop.is_set():
            idle = loop.can_idle()
            if idle:
                rem = nxt - pc()
                if rem > 0 and wake.wait(rem):
                    nxt = pc()  # a command: tick now
                wake.clear()
            else:
                rem = nxt - pc() - spin
                if rem > 0:
                    time.sleep(rem)
                while pc() < nxt:
                    pass
            t0 = pc()
            if not idle:
                late.append((t0 - nxt) * 1e6)
                late_n[bin_of(int((t0 - nxt) * 1e6))] += 1
            gap_n[bin_of(int((t0 - t_prev) * 1e6))] += 1
            if tick_clock is not None:
                tick_clock.advance(min(t0 - t_prev, step))
            t_prev = t0
            if self._stall_s:
                s, self._stall_s = self._stall_s, 0.0
                if tick_clock is not None:
                    tick_clock.advance(s)
                time.sleep(s)
            if self.before_tick is not None:
                self.before_tick()
            loop.tick()
            if self.after_tick is not None:
                self.after_tick()
            t1 = pc()
            if not idle:
                cost.append((t1 - t0) * 1e6)
            still_idle = loop.can_idle()
            if idle and not still_idle and loop.on_busy is not None:
                loop.on_busy()  # the supervisor back to its full cadence
            step = idle_period if idle and still_idle else period
            nxt += step
            if t1 > nxt:
                loop.overruns += 1
                if tick_clock is not None:
                    nxt = t1  # on a TickClock a pause did not happen: nothing to catch up
                elif t1 - nxt > self.MAX_CATCH_UP * period:
                    # Far behind (a long stall): skip ahead rather than burst through old ticks.
                    nxt += (int((t1 - nxt) / period) + 1) * period

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
