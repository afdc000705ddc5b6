"""A whole simulated appliance core in simulated time: clock, board, loop, supervisor.

Tests and the bench drive it tick by tick, so every run is exactly repeatable. ``stall_loop``
models a hung control thread (ticks stop, the supervisor keeps running); ``stall_all`` models a
frozen process (nothing runs, only the hardware dead-man acts). ``lift_pattern`` is a person
lifting the electrodes again and again, for the charge-balance test and bench.
"""

from __future__ import annotations

import random

from hw.clock import SimClock
from hw.config import Config, load_config
from hw.control.loop import ControlLoop, OutputState
from hw.control.waveform import WaveformSpec
from hw.hal.board import build_sim_board
from hw.safety import Guard
from hw.safety.supervisor import Supervisor


class SimRig:
    def __init__(self, cfg: Config | None = None, seed: int = 1):
        self.cfg = cfg or load_config(env={})
        self.clock = SimClock()
        self.board = build_sim_board(self.cfg, self.clock, seed=seed)
        self.sim = self.board.sim
        self.guard = Guard(self.board, self.clock)
        self.loop = ControlLoop(self.cfg, self.board, self.clock, self.guard)
        self.supervisor = Supervisor(self.loop, self.clock)
        self.tick_s = self.loop.tick_s
        self._sup_every = max(1, round(self.cfg.loop.supervisor_period_ms / 1000 / self.tick_s))
        self._n = 0
        self.loop_stalled = False
        self.all_stalled = False
        self.on_tick = None  # optional callback(rig) after every tick

    def step(self) -> None:
        """One tick of simulated time."""
        self.clock.advance(self.tick_s)
        self._n += 1
        if not (self.loop_stalled or self.all_stalled):
            self.loop.tick()
        if not self.all_stalled and self._n % self._sup_every == 0:
            self.supervisor.check()
        self.sim.advance()
        if self.on_tick is not None:
            self.on_tick(self)

    def run(self, seconds: float) -> None:
        for _ in range(max(1, round(seconds / self.tick_s))):
            self.step()

    def run_until(self, predicate, timeout_s: float) -> bool:
        for _ in range(max(1, round(timeout_s / self.tick_s))):
            self.step()
            if predicate():
                return True
        return False

    def post(self) -> dict:
        """Run the self-test to its end; returns its result."""
        self.loop.run_post()
        self.step()
        self.run_until(lambda: self.loop.state != OutputState.POST, 2.0)
        return self.loop.post_result

    def start(self, target_ua: float, spec: WaveformSpec | None = None, ramp: bool = True) -> None:
        self.loop.start(spec or WaveformSpec(50.0, 10.0), target_ua)
        self.step()
        if ramp:
            # Renew the lease through the ramp, as the kiosk does.
            for _ in range(50):
                self.loop.renew_lease()
                if self.run_until(lambda: self.loop.state != OutputState.RAMP_UP, 0.1):
                    break

    def run_leased(self, seconds: float) -> None:
        """Run tick by tick, renewing the lease every tick (a perfectly live kiosk)."""
        for _ in range(max(1, round(seconds / self.tick_s))):
            self.loop.renew_lease()
            self.step()

    def run_leased_until(self, predicate, timeout_s: float) -> bool:
        for _ in range(max(1, round(timeout_s / self.tick_s))):
            self.loop.renew_lease()
            self.step()
            if predicate():
                return True
        return False

    def keep_lease(self, seconds: float) -> None:
        """Run while renewing the lease every 100 ms, as a live kiosk does."""
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            self.loop.renew_lease()
            self.run(min(0.1, end - self.clock.now()))

    def close(self) -> None:
        self.board.close()


def lift_pattern(rig: SimRig, seconds: float, seed: int) -> int:
    """Contact for 1.5-4 s, lifted for 0.2-1 s, repeated ("Lift, return, repeat") for about
    ``seconds`` of board time or until a trip, renewing the lease; returns the number of lifts.
    The same ``seed`` gives the same pattern."""
    rng = random.Random(seed)
    end = rig.clock.now() + seconds
    lifts = 0
    while rig.clock.now() < end and not rig.guard.tripped:
        rig.keep_lease(rng.uniform(1.5, 4.0))
        rig.sim.inject("lift_off")
        lifts += 1
        rig.keep_lease(rng.uniform(0.2, 1.0))
        rig.sim.clear("lift_off")
    return lifts
