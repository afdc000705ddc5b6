"""The fault codes, their plain-language texts, and the record of a trip (see guard.py).

A code is stable (it goes over the socket and into the history); its message says what happened and
its action what the person should do, in the words the kiosk shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Fault(StrEnum):
    OVERCURRENT = "OVERCURRENT"
    OVERCURRENT_SETPOINT = "OVERCURRENT_SETPOINT"
    HW_OVERCURRENT = "HW_OVERCURRENT"
    OPEN_CIRCUIT = "OPEN_CIRCUIT"
    IMPEDANCE_LOW = "IMPEDANCE_LOW"
    ADC_SATURATED = "ADC_SATURATED"
    ADC_STUCK = "ADC_STUCK"
    ADC_REFERENCE = "ADC_REFERENCE"
    RAIL = "RAIL"
    SPI_ERROR = "SPI_ERROR"
    NET_CHARGE = "NET_CHARGE"
    RESIDUAL_CURRENT = "RESIDUAL_CURRENT"
    OUTPUT_TIME = "OUTPUT_TIME"
    CHARGER = "CHARGER"
    ESTOP = "ESTOP"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    LOOP_STALL = "LOOP_STALL"
    POST_FAILED = "POST_FAILED"
    INTERNAL = "INTERNAL"
    SHUTDOWN = "SHUTDOWN"
    UNACKNOWLEDGED = "UNACKNOWLEDGED"


# (message for the person, what to do). Written for the fault screen and the service log.
FAULT_TEXT: dict[Fault, tuple[str, str]] = {
    Fault.OVERCURRENT: (
        "The current rose above the safety limit.",
        "Stop using the device and contact service.",
    ),
    Fault.OVERCURRENT_SETPOINT: (
        "The current was higher than the level asked for.",
        "Stop using the device and contact service.",
    ),
    Fault.HW_OVERCURRENT: (
        "The hardware current limit tripped.",
        "Stop using the device and contact service.",
    ),
    Fault.OPEN_CIRCUIT: (
        "The current did not follow the setting although the electrodes seemed connected.",
        "Check the electrode cable. If it happens again, contact service.",
    ),
    Fault.IMPEDANCE_LOW: (
        "The two electrodes touched each other.",
        "Keep the electrodes apart on the skin, then acknowledge and start again.",
    ),
    Fault.ADC_SATURATED: (
        "The current measurement went off its scale.",
        "Stop using the device and contact service.",
    ),
    Fault.ADC_STUCK: (
        "The current measurement stopped changing.",
        "Restart the device. If it happens again, contact service.",
    ),
    Fault.ADC_REFERENCE: (
        "The measurement reference is out of range.",
        "Restart the device. If it happens again, contact service.",
    ),
    Fault.RAIL: (
        "The output supply voltage is out of range.",
        "Restart the device. If it happens again, contact service.",
    ),
    Fault.SPI_ERROR: (
        "Communication with the output electronics failed.",
        "Restart the device. If it happens again, contact service.",
    ),
    Fault.NET_CHARGE: (
        "The treatment current became unbalanced (a direct-current component).",
        "Stop using the device and contact service.",
    ),
    Fault.RESIDUAL_CURRENT: (
        "Current is flowing although the output is switched off.",
        "Take the electrodes off your skin now, unplug the device and contact service.",
    ),
    Fault.OUTPUT_TIME: (
        "The treatment reached its maximum time.",
        "Acknowledge; the treatment is over.",
    ),
    Fault.CHARGER: (
        "A charger or mains adapter is connected.",
        "Unplug the charger, then acknowledge. The device never treats while charging.",
    ),
    Fault.ESTOP: (
        "The stop button was pressed.",
        "Release the stop button, then acknowledge.",
    ),
    Fault.LEASE_EXPIRED: (
        "The screen stopped responding, so the output was switched off.",
        "Acknowledge and start again.",
    ),
    Fault.LOOP_STALL: (
        "The output control stopped running on time.",
        "Restart the device. If it happens again, contact service.",
    ),
    Fault.POST_FAILED: (
        "The self-test failed.",
        "Restart the device. If it happens again, contact service.",
    ),
    Fault.INTERNAL: (
        "An internal error stopped the output.",
        "Restart the device. If it happens again, contact service.",
    ),
    Fault.SHUTDOWN: (
        "The device was shut down during output.",
        "Acknowledge and start again.",
    ),
    Fault.UNACKNOWLEDGED: (
        "A fault before the last restart was never acknowledged.",
        "Read the history, then acknowledge.",
    ),
}

# Faults after which the hardware path itself is in doubt (the tests report them as such). Every
# trip needs a new self-test anyway, since it also trips the hardware latch (see trip()).
NEEDS_POST = frozenset(
    {
        Fault.OVERCURRENT,
        Fault.OVERCURRENT_SETPOINT,
        Fault.HW_OVERCURRENT,
        Fault.OPEN_CIRCUIT,
        Fault.ADC_SATURATED,
        Fault.ADC_STUCK,
        Fault.ADC_REFERENCE,
        Fault.RAIL,
        Fault.SPI_ERROR,
        Fault.NET_CHARGE,
        Fault.RESIDUAL_CURRENT,
        Fault.LOOP_STALL,
        Fault.POST_FAILED,
        Fault.INTERNAL,
    }
)


@dataclass(frozen=True)
class FaultRecord:
    code: Fault
    message: str
    action: str
    detail: str
    t_s: float  # board clock

    def as_dict(self) -> dict:
        return {
            "code": str(self.code),
            "message": self.message,
            "action": self.action,
            "detail": self.detail,
        }
