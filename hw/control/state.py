"""The loop's public vocabulary: its output states, the state sets the checks and the runner use,
the refusal every command may raise, and the snapshot it publishes."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple


class OutputState(StrEnum):
    OFF = "off"
    POST = "post"
    RAMP_UP = "ramp_up"
    ON = "on"
    RAMP_DOWN = "ramp_down"
    LIFTED = "lifted"
    BALANCE = "balance"  # after re-contact: returning what a lift-off left unbalanced
    TRIPPED = "tripped"


ACTIVE = frozenset(
    {
        OutputState.RAMP_UP,
        OutputState.ON,
        OutputState.RAMP_DOWN,
        OutputState.LIFTED,
        OutputState.BALANCE,
    }
)
DRIVING = frozenset(
    {OutputState.RAMP_UP, OutputState.ON, OutputState.RAMP_DOWN, OutputState.BALANCE}
)
IDLE = frozenset({OutputState.OFF, OutputState.TRIPPED})  # a runner may tick slower (can_idle)


class CommandRefused(Exception):
    """A command that cannot be carried out now; the message says why. Nothing was changed."""


class Snapshot(NamedTuple):
    """What the loop is doing, published a few hundred times a second for status and dose.

    A NamedTuple, not a frozen dataclass: it is built on the real-time thread every 5 ms, and a
    tuple costs well under a microsecond where a frozen dataclass's setattr-per-field costs ~5."""

    t_s: float
    state: OutputState
    target_ua: float
    amplitude_ua: float
    measured_ua: float  # recent mean |I| over samples where the output was driving a phase
    impedance_ohm: float | None
    contact_quality_pct: float
    contact: bool
    charge_uc: float  # delivered, integral of |I|
    net_charge_uc: float  # integral of I: the DC component
    peak_ua: float
    active_s: float  # time the output drove current this treatment (lifted time excluded)
    lease_left_ms: float | None
    post_valid: bool
    fault: dict | None
    residual_ua: float  # |current| measured while the output is off or tripped
    alarm: dict | None  # current flowing with the output off: take the electrodes off
    ticks: int
    overruns: int
    gap_max_ms: float  # worst time between two tick starts since the loop began
    # The runner's histograms (hw.control.tickhist counts since it started) of tick-start lateness
    # and of the gap between tick starts: its live arrays, not copies (a copy would cost ~5 us a
    # publish; counts only grow, so whoever copies them gets a valid reading). Empty without a
    # runner.
    late_hist: Sequence[int] = ()
    gap_hist: Sequence[int] = ()
