"""One client connection (an asyncio.Protocol with bounded buffers), and the connection limits.

A :class:`Client` only buffers: the daemon's service task takes its requests from ``inbuf`` (see
hw/service/scheduler.py); nothing is dispatched from the socket callbacks themselves.
:func:`make_room` and :func:`close_expired` keep the limits of docs/protocol.md ("Connection
limits"): the cap, the hello timeout, the idle limit and the write stall.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from hw.service.scheduler import UNGREETED_LINES_BURST

if TYPE_CHECKING:
    from hw.service.daemon import Daemon

log = logging.getLogger("hw")

CLIENT_BUFFER_LIMIT = 256 * 1024  # above this a client is too slow: it misses status lines
CLIENT_BUFFER_DROP = 2 * 1024 * 1024  # above this it is disconnected
INPUT_BUFFER_MAX = 64 * 1024  # unparsed input above this: stop reading from that socket
WRITE_HIGH_BYTES = 64 * 1024  # unread output above this: serve none of that client's requests
# Connection limits.
MAX_CLIENTS = 32  # at the cap the oldest un-greeted (else the idlest) connection makes room
ACCEPT_BACKLOG = 16  # also how many connections one turn of the event loop accepts at most
HELLO_TIMEOUT_S = 10.0  # no hello within this after connecting: closed
IDLE_TIMEOUT_S = 300.0  # nothing received for this and not subscribed to status: closed
WRITE_STALL_S = 5.0  # output unread above WRITE_HIGH_BYTES for this long: closed as too slow


class Client(asyncio.Protocol):
    """One connection. The daemon's service task reads its requests from ``inbuf``; nothing is
    dispatched from the socket callbacks themselves."""

    _ids = 0

    def __init__(self, daemon: Daemon):
        Client._ids += 1
        self.n = Client._ids
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.name = "?"
        self.greeted = False
        self.want_status = False
        self.want_events = True
        self.dropped_status = 0
        self.inbuf = bytearray()
        self.head = None  # the next line, taken off inbuf and parsed, not yet run
        self.discarding = False  # inside an oversized line: drop bytes up to its newline
        self.eof = False  # the peer half-closed: answer what it sent, then close
        self.closing = False  # bye, eviction or shutdown: nothing more of it runs
        self.closed_s: float | None = None  # when close() was called (its output may still flush)
        self.busy = False  # a history reply is being built: its next request waits (order)
        self.reading_paused = False
        self.write_paused_since: float | None = None
        self.turn_reply_bytes = 0
        self.connected_s = self.last_rx_s = self.tokens_s = time.monotonic()
        self.tokens = UNGREETED_LINES_BURST
        self.rate_timer = False

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES)
        self.daemon._accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # nothing runs after bye (or after the daemon decided to close it)
        self.last_rx_s = time.monotonic()
        if self.discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self.discarding = False
        self.inbuf += data
        if len(self.inbuf) > INPUT_BUFFER_MAX and not self.reading_paused:
            self.transport.pause_reading()  # back-pressure: the kernel buffers, then the sender
            self.reading_paused = True
        self.daemon._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.daemon._wake()
        return True  # keep our side open: its replies are still sent

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.inbuf.clear()
        self.daemon._lost(self)

    def pause_writing(self) -> None:
        self.write_paused_since = time.monotonic()

    def resume_writing(self) -> None:
        self.write_paused_since = None
        self.daemon._wake()

    # -- used by the daemon
    def resume_reading_if_drained(self) -> None:
        """Read from the socket again once the unparsed input is under half INPUT_BUFFER_MAX."""
        if self.reading_paused and len(self.inbuf) < INPUT_BUFFER_MAX // 2 and not self.closing:
            self.transport.resume_reading()
            self.reading_paused = False

    @property
    def write_blocked(self) -> bool:
        return self.write_paused_since is not None

    def send(self, data: bytes, droppable: bool = False) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        size = t.get_write_buffer_size()
        if size > CLIENT_BUFFER_DROP:
            log.warning("client %d (%s) too slow: disconnected", self.n, self.name)
            self.close(abort=True)
            return
        if droppable and size > CLIENT_BUFFER_LIMIT:
            self.dropped_status += 1
            return
        self.turn_reply_bytes += len(data)
        t.write(data)

    def close(self, abort: bool = False) -> None:
        """Stop serving it; ``abort`` drops unsent output (a client that does not read)."""
        self.closing = True
        self.inbuf.clear()
        if self.closed_s is None:
            self.closed_s = time.monotonic()
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort() if abort else t.close()  # close() still flushes what is queued


def make_room(clients: set[Client], lease_holder: Client | None, conn_log) -> None:
    """At the cap (MAX_CLIENTS), close one connection so that a new one fits."""
    if len(clients) < MAX_CLIENTS:
        return
    # Always room for a new connection (the kiosk after a restart): one already closed
    # but not yet flushed goes first, then the oldest that never said hello, else the
    # one idle longest; never the lease holder.
    others = [c for c in clients if c is not lease_holder]
    victims = [c for c in others if c.closing] or [c for c in others if not c.greeted] or others
    if victims:
        v = min(victims, key=_eviction_key)
        if not v.closing:
            conn_log.warning(
                "cap",
                "connection cap %d reached: closed client %d (%s, %s)",
                MAX_CLIENTS,
                v.n,
                v.name,
                "idle" if v.greeted else "no hello",
            )
        v.close(abort=True)
        clients.discard(v)


def close_expired(clients: set[Client], lease_holder: Client | None, now: float, conn_log) -> None:
    """Close the connections past a limit: hello timeout, write stall, idle limit (``now``:
    monotonic s)."""
    for c in list(clients):
        if c.closing:
            if c.closed_s is not None and now - c.closed_s > WRITE_STALL_S:
                c.close(abort=True)  # closed but never read its last replies: let it go
                clients.discard(c)
            continue
        if not c.greeted and now - c.connected_s > HELLO_TIMEOUT_S:
            conn_log.warning(
                "hello", "client %d closed: no hello within %g s", c.n, HELLO_TIMEOUT_S
            )
            c.close(abort=True)
        elif c.write_paused_since is not None and now - c.write_paused_since > WRITE_STALL_S:
            log.warning("client %d (%s) too slow: disconnected", c.n, c.name)
            c.close(abort=True)
        elif not c.want_status and c is not lease_holder and now - c.last_rx_s > IDLE_TIMEOUT_S:
            conn_log.warning(
                "idle", "client %d (%s) closed: idle for %g s", c.n, c.name, IDLE_TIMEOUT_S
            )
            c.close(abort=True)


def _eviction_key(c: Client) -> float:
    if c.closing:
        return c.closed_s or 0.0
    return c.last_rx_s if c.greeted else c.connected_s
