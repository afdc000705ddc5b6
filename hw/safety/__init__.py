"""The safety chain, read from the top (docs/safety.md is its reference):

- ``faults``: every fault code with the words the person reads, and the trip record;
- ``guard``: the one shutdown path ``Guard.trip()`` (idempotent, latched, first fault wins), the one
  guarded enable and the one cut;
- ``thresholds``: every limit the per-sample checks use, built once from the config, each with
  why it is what it is;
- ``monitor``: the per-sample checks, in the order the loop's tick runs them (hw.control.loop);
  each reports a fault code and detail, or None; the loop trips the first through the guard;
- ``supervisor``: another thread that trips ``LOOP_STALL`` when the loop stops ticking, and the
  watchdog's health view;
- ``selftest``: POST, against an independent reference (the test load), over a narrow port
  (``PostPort``; the loop's side: hw.control.postport).

Importing this package does no I/O.
"""

from hw.safety.faults import FAULT_TEXT, NEEDS_POST, Fault, FaultRecord
from hw.safety.guard import Guard

__all__ = ["FAULT_TEXT", "NEEDS_POST", "Fault", "FaultRecord", "Guard"]
