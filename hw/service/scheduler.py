"""Fair service: which request of which connection runs next (docs/protocol.md, "Fair service").

:class:`FairScheduler` is the daemon's service task's turn: every connection with pending input
gets a bounded share per turn (lines, bytes, reply bytes, and a token bucket for its sustained
rate); lease renewals, stop and e-stop go first; a connection whose reply is pending, or which does
not read its output, runs only those. :class:`BulkGate` lets history queries onto the history
thread one at a time, each followed by a pause. Neither runs a request itself: the daemon's
``dispatch`` does (hw/service/commands.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hw.service import protocol as P

if TYPE_CHECKING:
    from hw.service.connection import Client

# Fair service (docs/protocol.md, "Fair service"): one turn of the service task serves every
# connection with pending input at most this much, so no connection can hold the service thread,
# which also renews the lease, for longer than its share.
TURN_LINES = 16  # request lines (blank ones included) per connection per turn
TURN_BYTES = 16 * 1024  # request bytes parsed per connection per turn (at least one line)
TURN_REPLY_BYTES = 32 * 1024  # reply bytes per connection per turn
UNGREETED_TURN_LINES = 4  # a connection that has not said hello gets less
UNGREETED_TURN_BYTES = 2048
UNGREETED_PACE_S = 0.005  # ...and, when only such connections have work, one turn per 5 ms
# ...and a sustained rate per connection (token bucket; a run of blank lines costs one per KiB):
# far above what a kiosk or the CLI sends, far below what would keep this thread busy.
LINES_PER_S, LINES_BURST = 2000.0, 1000.0
UNGREETED_LINES_PER_S, UNGREETED_LINES_BURST = 200.0, 50.0
PRIORITY_COMMANDS = frozenset({"lease", "stop", "estop"})  # served first in every turn
# History queries run on the history thread one at a time: a flood of them can never sit in
# front of the treatment record's begin() by more than one query.
BULK_COMMANDS = frozenset({"history", "treatment", "totals", "events", "export_csv"})
MAX_BULK_IN_FLIGHT = 1
# ...and after each one the next waits three times as long as it took: the history thread, which
# shares the GIL and the CPU with the control loop, is busy at most a quarter of the time.
BULK_PAUSE_FACTOR = 3.0


class BulkGate:
    """History queries (BULK_COMMANDS): at most MAX_BULK_IN_FLIGHT at once, and after each a pause
    of BULK_PAUSE_FACTOR times its duration. ``wake()`` is called when one may start again;
    ``call_later(delay_s, fn)`` is the event loop's."""

    def __init__(self, wake: Callable[[], None], call_later: Callable):
        self._wake = wake
        self._call_later = call_later
        self.in_flight = 0
        self.next_s = 0.0  # (monotonic) no history query starts before this
        self._timer = False

    def ok(self) -> bool:
        """May a history query start now? (If not, the service is woken when one may.)"""
        if self.in_flight >= MAX_BULK_IN_FLIGHT:
            return False  # woken by the reply of the one in flight
        wait_s = self.next_s - time.monotonic()
        if wait_s > 0:
            if not self._timer:  # one timer, however many turns ask meanwhile
                self._timer = True
                self._call_later(wait_s, self._timer_wake)
            return False
        return True

    def _timer_wake(self) -> None:
        self._timer = False
        self._wake()

    def begun(self) -> float:
        """A query went to the history thread; returns when (monotonic s), for ``ended``."""
        self.in_flight += 1
        return time.monotonic()

    def ended(self, t_submit_s: float) -> None:
        """The query submitted at ``t_submit_s`` answered (the caller wakes the service)."""
        self.in_flight -= 1
        now = time.monotonic()
        self.next_s = now + BULK_PAUSE_FACTOR * (now - t_submit_s)


class FairScheduler:
    """Serves the connections in ``clients`` (the daemon's set) in turns; ``dispatch(client,
    request)`` runs one parsed request, ``wake()`` asks for another turn, ``call_later(delay_s,
    fn, *args)`` is the event loop's."""

    def __init__(
        self,
        clients: set[Client],
        dispatch: Callable[[Client, P.Request], None],
        bulk: BulkGate,
        wake: Callable[[], None],
        call_later: Callable,
    ):
        self.clients = clients
        self._dispatch = dispatch
        self.bulk = bulk
        self._wake = wake
        self._call_later = call_later
        self._turns = 0

    def turn(self) -> str | None:
        """One turn: connections whose next request is a lease renewal, stop or e-stop first,
        then the others (rotating who goes first). Says who has work left for another turn:
        "greeted", "ungreeted" (only connections without hello) or None."""
        ready = [c for c in self.clients if self._servable(c)]
        if not ready:
            return None
        self._turns += 1
        k = self._turns % len(ready)
        ready = ready[k:] + ready[:k]
        for c in ready:
            if c.head is None:
                c.head = self.next_item(c)
        ready.sort(key=lambda c: not _is_priority(c.head))  # stable: rotation kept within lanes
        left = None
        for c in ready:
            if self._serve(c):
                left = "greeted" if c.greeted or left == "greeted" else "ungreeted"
        return left

    def _servable(self, c: Client) -> bool:
        if c.closing:
            return False
        if c.busy:
            # A reply of its is pending (a history query, a start): lease, stop and e-stop still
            # run (their replies overtake it; every reply carries its request's id).
            if c.head is None:
                c.head = self.next_item(c)
            return _is_priority(c.head)
        if c.head is None and not c.inbuf:
            if c.eof:
                c.close()  # half-closed and everything it sent has been answered
            return False
        if c.write_blocked:
            # It does not read: only a lease renewal, stop or e-stop of it still runs (tiny
            # replies; the kiosk's UI being slow for a moment must not expire its lease).
            if c.head is None:
                c.head = self.next_item(c)
            return _is_priority(c.head)
        return True

    def next_item(self, c: Client):
        """Take the next line off ``c.inbuf``: ("blank" | "error" | "req", value, bytes), or None
        when no complete line is there."""
        buf = c.inbuf
        nl = buf.find(b"\n", 0, P.MAX_LINE_BYTES + 1)
        if nl < 0:
            if len(buf) > P.MAX_LINE_BYTES:
                rest = buf.find(b"\n")
                if rest < 0:
                    buf.clear()
                    c.discarding = True  # the rest of it is dropped as it arrives
                else:
                    del buf[: rest + 1]
                msg = f"a request may be at most {P.MAX_LINE_BYTES} bytes"
                return ("error", P.reply_error(None, P.TOO_LARGE, msg), P.MAX_LINE_BYTES)
            if c.eof:
                buf.clear()  # a partial last line before end-of-file gets no reply
            return None
        if nl == 0 or not buf[:nl].strip():
            # A run of blank lines is one item (its bytes still count against the budget).
            n = len(buf) - len(buf.lstrip())
            n = buf.rfind(b"\n", 0, max(n, nl + 1)) + 1
            del buf[:n]
            return ("blank", None, n)
        line = bytes(buf[:nl])
        del buf[: nl + 1]
        try:
            return ("req", P.parse_request(line), nl + 1)
        except P.ProtocolError as e:
            return ("error", P.reply_error(e.req_id, e.code, e.message), nl + 1)

    def _serve(self, c: Client) -> bool:
        """Serve ``c`` within its budget for this turn. True if it has more to do right away."""
        max_lines = TURN_LINES if c.greeted else UNGREETED_TURN_LINES
        max_bytes = TURN_BYTES if c.greeted else UNGREETED_TURN_BYTES
        rate, burst = (
            (LINES_PER_S, LINES_BURST)
            if c.greeted
            else (UNGREETED_LINES_PER_S, UNGREETED_LINES_BURST)
        )
        now = time.monotonic()
        c.tokens = min(burst, c.tokens + (now - c.tokens_s) * rate)
        c.tokens_s = now
        lines = nbytes = 0
        c.turn_reply_bytes = 0
        more = True
        while lines < max_lines and nbytes < max_bytes and c.turn_reply_bytes < TURN_REPLY_BYTES:
            if c.tokens < 1.0:
                # Over its rate: its next share comes when it has earned one line again.
                if not c.rate_timer:
                    c.rate_timer = True
                    self._call_later((1.0 - c.tokens) / rate, self._rate_wake, c)
                more = False
                break
            if c.closing:
                more = False
                break
            item = c.head if c.head is not None else self.next_item(c)
            c.head = None
            if item is None:
                more = False
                break
            if c.busy and not _is_priority(item):
                c.head = item  # waits for its pending reply (woken when that is sent)
                more = False
                break
            if c.write_blocked and not _is_priority(item):
                c.head = item  # waits until it reads (woken by resume_writing)
                more = False
                break
            kind, value, size = item
            if kind == "req" and value.cmd in BULK_COMMANDS and c.greeted and not self.bulk.ok():
                c.head = item  # waits its turn (woken when the history thread may take it)
                more = False
                break
            lines += 1
            nbytes += size
            c.tokens -= 1.0 + (size // 1024 if kind == "blank" else 0)
            if kind == "error":
                c.send(value)
            elif kind == "req":
                self._dispatch(c, value)
        c.resume_reading_if_drained()
        if c.eof and c.head is None and not c.inbuf and not c.busy and not c.closing:
            c.close()  # half-closed and everything it sent has been answered
        return more

    def _rate_wake(self, c: Client) -> None:
        c.rate_timer = False
        self._wake()


def _is_priority(item) -> bool:
    return item is not None and item[0] == "req" and item[1].cmd in PRIORITY_COMMANDS
