"""Shared fixtures for the hardware-core tests: a simulated appliance in simulated time."""

from __future__ import annotations

import pytest

from hw.control.loop import OutputState
from hw.control.waveform import WaveformSpec
from hw.hal.sim.rig import SimRig

RUNNING_TARGET_UA = 200.0
RUNNING_SPEC = WaveformSpec(50.0, 10.0)


@pytest.fixture
def rig():
    """A fresh simulated appliance (no self-test run yet), closed at teardown."""
    r = SimRig(seed=1)
    yield r
    r.on_tick = None
    r.sim.clear_all()  # a held e-stop makes gpiozero's Button.close() wait 1 s for its thread
    r.close()


@pytest.fixture
def running_rig(rig):
    """Self-test passed, output ON at 200 uA, WaveformSpec(50, 10), normal skin, lease kept."""
    result = rig.post()
    assert result is not None and result["passed"], result
    rig.sim.set_skin("normal")
    rig.loop.start(RUNNING_SPEC, RUNNING_TARGET_UA)
    for _ in range(60):  # the ramp takes about 1 s; renew the lease every 100 ms
        rig.keep_lease(0.1)
        if rig.loop.state == OutputState.ON:
            break
    assert rig.loop.state == OutputState.ON, (rig.loop.state, rig.guard.fault)
    rig.keep_lease(0.1)
    assert rig.loop.state == OutputState.ON and not rig.guard.tripped
    return rig
