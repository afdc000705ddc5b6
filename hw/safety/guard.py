"""The one shutdown path, :meth:`Guard.trip`, and the one guarded enable (codes in faults.py).

Every fault, from any thread, ends in ``Guard.trip(code)``. It is idempotent and latched:

1. output enable low (the relay opens; needs no SPI, so it works even with a hung bus),
2. the DAC's hardware /SHDN line low (both channels shut down without the bus),
3. DAC A to its zero code and both channels shut down over SPI (the same, by the second route;
   channel B shut down sets the comparator threshold to 0 V, so the hardware latch trips too),
4. LED off, test load deselected,
5. the first fault is latched with its code, a plain-language message and the time; later trips
   keep the first reason (they are counted),
6. listeners are told (without blocking: they only queue).

Every other path that switches the output path on goes through :meth:`Guard.enable` (it re-checks
the latch after switching, so a trip racing it always wins), and every normal "off" (stop, lift-off
timeout, close) goes through :meth:`Guard.cut`, the same first steps as the trip without the latch.

Current that flows while the output is off or tripped is the one hazard a cut cannot end (a welded
relay and a stage run away): it raises :attr:`Guard.alarm`, latched beside the first fault, whose
message tells the person to take the electrodes off.

While latched, nothing enables the output. Only :meth:`Guard.acknowledge` clears the latch, and only
once the cause is gone (e-stop released, charger unplugged). A trip also invalidates the self-test
(the hardware latch must be re-armed by it), so a new POST must pass before any output.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from hw.clock import Clock
from hw.hal.board import Board
from hw.safety.faults import FAULT_TEXT, Fault, FaultRecord


class Guard:
    """Owns the trip latch and the safe state of one board. Thread-safe."""

    BUS_LOCK_TIMEOUT_S = 0.002

    def __init__(self, board: Board, clock: Clock):
        self._board = board
        self._clock = clock
        self._lock = threading.Lock()
        self.fault: FaultRecord | None = None
        # Raised before anything else in trip(): a thread that enables the output re-checks it
        # afterwards, so a trip racing an enable always ends with the output off.
        self._cutting = False
        self.trip_count = 0
        self.post_valid = False
        self.listeners: list[Callable[[FaultRecord], None]] = []
        self.safe_state_errors = 0
        # Current flowing while off or tripped: latched beside the first fault (which it never
        # replaces), cleared only by an acknowledge once nothing flows.
        self.alarm: FaultRecord | None = None

    @property
    def tripped(self) -> bool:
        return self._cutting or self.fault is not None

    def trip(self, code: Fault, detail: str = "") -> FaultRecord:
        """Cut the output at once and latch ``code`` (the first fault wins). Idempotent."""
        b = self._board
        self._cutting = True
        # 1. Relay open. First, and outside every lock: it must not wait for anything.
        try:
            b.lines.output_enable.off()
        except Exception:  # noqa: BLE001 - the DAC paths below are the next chances
            self.safe_state_errors += 1
        # 2. The DAC's hardware /SHDN: zero current without the SPI bus.
        try:
            b.lines.dac_shutdown.off()
        except Exception:  # noqa: BLE001
            self.safe_state_errors += 1
        with self._lock:
            first = self.fault is None
            self.trip_count += 1
            if first:
                message, action = FAULT_TEXT[code]
                self.fault = FaultRecord(code, message, action, detail, self._clock.now())
                # Every trip drops the DAC (channel B too), which trips the hardware latch: the
                # self-test re-arms it, so any trip needs a passing self-test before output.
                self.post_valid = False
            record = self.fault
        # 3. DAC to zero and shut down over SPI as well. If the loop holds the bus (or the bus
        #    hangs) the relay is already open and the dead-man stops being kicked: don't wait.
        got = b.bus_lock.acquire(timeout=self.BUS_LOCK_TIMEOUT_S)
        try:
            b.dac.shutdown(b.zero_code)
        except Exception:  # noqa: BLE001
            self.safe_state_errors += 1
        finally:
            if got:
                b.bus_lock.release()
        # 4. Indicators and the test load.
        for dev in (b.lines.output_led, b.lines.test_load):
            try:
                dev.off()
            except Exception:  # noqa: BLE001
                self.safe_state_errors += 1
        if first:
            for listener in list(self.listeners):
                try:
                    listener(record)
                except Exception:  # noqa: BLE001 - a listener must never undo a trip
                    pass
        return record

    def raise_alarm(self, code: Fault, detail: str) -> FaultRecord:
        """Latch the residual-current alarm (and trip, if nothing is latched yet)."""
        self.trip(code, detail)
        with self._lock:
            if self.alarm is None:
                message, action = FAULT_TEXT[code]
                self.alarm = FaultRecord(code, message, action, detail, self._clock.now())
            return self.alarm

    # ------------------------------------------------------------------ the guarded paths
    def enable(self, *, relay: bool = True) -> bool:
        """The one guarded enable: DAC /SHDN high and, with ``relay``, output enable high.

        Refused (returns False, nothing switched) while a fault is latched or being cut. Re-checks
        afterwards: a trip on another thread raised its flag before it cut, so whichever of the two
        runs last, the output ends off when a trip happened.
        """
        if self.tripped:
            return False
        lines = self._board.lines
        lines.dac_shutdown.on()
        if relay:
            lines.output_enable.on()
        if self.tripped:
            lines.output_enable.off()
            lines.dac_shutdown.off()
            return False
        return True

    def cut(self, zero_code: int | None = None) -> None:
        """The one normal "off": relay open, DAC A to zero (``zero_code``: the calibrated zero;
        default the nominal one), LED off. Not latched.

        The DAC's /SHDN stays high: it also holds channel B, the hardware comparator's threshold,
        which must keep guarding (a trip shuts it down, and then the self-test must re-arm it)."""
        b = self._board
        b.lines.output_enable.off()
        with b.bus_lock:
            b.dac.write_a(b.zero_code if zero_code is None else zero_code)
        b.lines.output_led.off()

    def begin_post(self) -> int:
        """The self-test starts: invalidates the last pass; returns the epoch to confirm with."""
        with self._lock:
            self.post_valid = False
            return self.trip_count

    def confirm_post(self, epoch: int) -> bool:
        """Mark the self-test passed, unless a trip happened since :meth:`begin_post`."""
        with self._lock:
            if self.fault is not None or self._cutting or self.trip_count != epoch:
                return False
            self.post_valid = True
            return True

    def acknowledge(self, cause_present: Callable[[], str | None]) -> str | None:
        """Clear the latch. Returns None on success or the reason it cannot be cleared yet."""
        with self._lock:
            if self.fault is None and not self._cutting and self.alarm is None:
                return None
            reason = cause_present()
            if reason:
                return reason
            self.fault = None
            self.alarm = None
            self._cutting = False
            return None
