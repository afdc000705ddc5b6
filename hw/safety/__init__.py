"""The safety chain, read from the top (docs/safety.md is its reference):

- ``faults``: every fault code with the words the person reads, and the trip record;
- ``guard``: the one shutdown path ``Guard.trip()`` (idempotent, latched, first fault wins), the one
  guarded enable and the one cut;
- ``selftest``: POST, against an independent reference (the test load), over the board;
- the loop's per-tick checks live with the loop in ``hw.control`` and all end in ``Guard.trip``.

Importing this package does no I/O.
"""

from hw.safety.faults import FAULT_TEXT, NEEDS_POST, Fault, FaultRecord
from hw.safety.guard import Guard

__all__ = ["FAULT_TEXT", "NEEDS_POST", "Fault", "FaultRecord", "Guard"]
