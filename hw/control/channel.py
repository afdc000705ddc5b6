"""The channel between the service and the real-time process: fixed-layout binary messages.

One AF_UNIX SOCK_SEQPACKET socketpair (one message per datagram, in order, EOF when the peer
dies). Every message is a ``struct`` of a fixed size chosen by its first byte (the opcode); text
fields are bounded (``TEXT_MAX`` bytes of UTF-8 for reasons and fault details, shorter ones for
names) and NUL-padded or length-prefixed. :func:`decode` validates a message completely (known
opcode, exact size, known enum values, valid UTF-8, lengths in range) and raises
:class:`ChannelError` otherwise: the real-time process trips INTERNAL on that, the service treats
it as the real-time process lost. No pickle, no JSON.

Service -> real-time: ``COMMAND`` (an opcode of :class:`Cmd`, a sequence number, four numbers and
a text). Every command but ``BEAT``, ``RENEW_LEASE`` and ``BUZZER`` is answered by a ``REPLY``
with the same sequence number (ok, or refused with the reason).

Real-time -> service: ``HELLO`` (once: pid, config digest, scheduling granted), ``STATE`` (every
``ControlLoop.SNAPSHOT_EVERY`` ticks and before every reply: the live state and the last
snapshot), ``FAULT`` (a latched fault or alarm with its detail, when it appears), ``EVENT`` (the
loop's events), ``POST`` (a self-test result), ``REPLY``.
"""

from __future__ import annotations

import math
import struct
from enum import IntEnum
from typing import NamedTuple

from hw.control.state import OutputState
from hw.control.tickhist import BINS
from hw.safety import Fault

HIST_BINS = BINS  # the runner's histograms (hw.control.tickhist)
TEXT_MAX = 200  # bytes of UTF-8: CommandRefused reasons, fault details, event texts
NAME_MAX = 32  # bytes: fault codes, event kinds, self-test steps, sim fault names

COMMAND, HELLO, REPLY, STATE, EVENT, FAULT, POST = 0x01, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15
HIST = 0x16  # the runner's timing histograms (hw/control/tickhist.py), a few times a second

STATES = list(OutputState)
FAULTS = list(Fault)


class Cmd(IntEnum):
    START = 1  # a=frequency_hz b=pulse_width_ms c=target_ua d=max_output_s (NaN: none) flag=resume
    SET_TARGET = 2  # a=target_ua
    SET_WAVEFORM = 3  # a=frequency_hz b=pulse_width_ms
    STOP = 4
    RENEW_LEASE = 5  # not answered
    BEAT = 6  # the engine's heartbeat; not answered
    ESTOP = 7  # text=detail
    RUN_POST = 8
    ACKNOWLEDGE = 9
    TRIP = 10  # a=fault index text=detail
    BLOCKER = 11  # answered refused(why output cannot start) or ok
    BUZZER = 12  # a=1 on, 0 off; not answered
    SIM_INJECT = 13  # text=fault name; the reply's text lists the active faults
    SIM_CLEAR = 14
    SIM_SKIN = 15  # text=skin
    SHUTDOWN = 16  # output off (a trip if it was on), then the real-time process exits


UNANSWERED = frozenset({Cmd.RENEW_LEASE, Cmd.BEAT, Cmd.BUZZER})

# op, cmd, flag, text length, seq, a, b, c, d, text
_COMMAND = struct.Struct(f"<BBBxHxxIdddd{TEXT_MAX}s")
# op, ok, text length, seq, t_s (the real-time process's CLOCK_MONOTONIC when answered), text
_REPLY = struct.Struct(f"<BBHId{TEXT_MAX}s")
# op, pid, tick_s, digest (sha256), scheduling note
_HELLO = struct.Struct("<BxxxId32s64s")
# op, state, snapshot state, fault index+1, alarm index+1, flags, pub seq, ticks, overruns, then
# the doubles of _STATE_FIELDS
_STATE_FIELDS = (
    "now_s",
    "t_s",
    "target_ua",
    "amplitude_ua",
    "measured_ua",
    "impedance_ohm",
    "contact_quality_pct",
    "charge_uc",
    "net_charge_uc",
    "peak_ua",
    "active_s",
    "lease_left_ms",
    "residual_ua",
    "gap_max_ms",
)
_STATE = struct.Struct("<BBBBBxHIQQ" + "d" * len(_STATE_FIELDS))
# op, which (0 fault, 1 alarm), fault index, text length, t_s, detail
_FAULT = struct.Struct(f"<BBBxHxxd{TEXT_MAX}s")
# op, text length, t_s, num, kind, code, text
_EVENT = struct.Struct(f"<BxHxxxxdd{NAME_MAX}s{NAME_MAX}s{TEXT_MAX}s")
# op, passed, text length, failed step, reason
_POST = struct.Struct(f"<BBH{NAME_MAX}s{TEXT_MAX}s")
# op, then the counts of the tick-lateness and the tick-gap histograms
_HIST = struct.Struct(f"<B7x{2 * HIST_BINS}Q")

SIZES = {
    COMMAND: _COMMAND.size,
    REPLY: _REPLY.size,
    HELLO: _HELLO.size,
    STATE: _STATE.size,
    FAULT: _FAULT.size,
    EVENT: _EVENT.size,
    POST: _POST.size,
    HIST: _HIST.size,
}
MAX_SIZE = max(SIZES.values())

# STATE flags
F_CONTACT, F_SNAP_CONTACT, F_POST_VALID, F_TRIPPED, F_POST_RESULT, F_HEALTHY, F_SNAP_POST = (
    1 << i for i in range(7)
)


class ChannelError(ValueError):
    """A message that is not one this channel defines (the text says what is wrong)."""


class Command(NamedTuple):
    cmd: Cmd
    seq: int
    a: float
    b: float
    c: float
    d: float
    flag: int
    text: str


class Reply(NamedTuple):
    seq: int
    ok: bool
    t_s: float
    text: str


class Hello(NamedTuple):
    pid: int
    tick_s: float
    digest: bytes
    sched: str


class State(NamedTuple):
    state: OutputState
    snap_state: OutputState
    fault: Fault | None
    alarm: Fault | None
    flags: int
    pub_seq: int
    ticks: int
    overruns: int
    f: dict  # _STATE_FIELDS -> float (NaN where the loop has None)


class FaultMsg(NamedTuple):
    alarm: bool
    code: Fault
    t_s: float
    detail: str


class Event(NamedTuple):
    t_s: float
    num: float
    kind: str
    code: str
    text: str


class HistMsg(NamedTuple):
    late: tuple[int, ...]  # tick-start lateness, per hw.control.tickhist bin
    gap: tuple[int, ...]  # time between tick starts, per bin


class PostMsg(NamedTuple):
    passed: bool
    failed_step: str
    reason: str


# ------------------------------------------------------------------------------ text fields
def _text(s: str, limit: int = TEXT_MAX) -> tuple[int, bytes]:
    """``s`` as at most ``limit`` bytes of UTF-8 (cut on a character boundary)."""
    b = str(s).encode("utf-8")[:limit]
    b = b.decode("utf-8", "ignore").encode("utf-8")
    return len(b), b


def _name(s: str) -> bytes:
    return _text(s, NAME_MAX)[1]


def _untext(raw: bytes, n: int, what: str) -> str:
    if n > len(raw) or any(raw[n:]):
        raise ChannelError(f"{what}: bad length {n}")
    try:
        return raw[:n].decode("utf-8")
    except UnicodeDecodeError:
        raise ChannelError(f"{what}: not UTF-8") from None


def _unname(raw: bytes, what: str) -> str:
    return _untext(raw, len(raw.rstrip(b"\0")), what)


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


# ------------------------------------------------------------------------------ encoding
def command(cmd: Cmd, seq: int, a=0.0, b=0.0, c=0.0, d=0.0, *, flag=0, text="") -> bytes:
    n, t = _text(text)
    return _COMMAND.pack(COMMAND, int(cmd), flag, n, seq, a, b, c, d, t)


def reply(seq: int, ok: bool, t_s: float, text: str = "") -> bytes:
    n, t = _text(text)
    return _REPLY.pack(REPLY, 1 if ok else 0, n, seq, t_s, t)


def hello(pid: int, tick_s: float, digest: bytes, sched: str) -> bytes:
    return _HELLO.pack(HELLO, pid, tick_s, digest, _text(sched, 64)[1])


def state(loop, now_s: float, pub_seq: int, healthy: bool) -> bytes:
    """The live state of ``loop`` (a ControlLoop) and its last snapshot."""
    g, s = loop.guard, loop.snapshot
    fault, alarm = g.fault, g.alarm
    flags = (
        (F_CONTACT if loop.contact else 0)
        | (F_SNAP_CONTACT if s.contact else 0)
        | (F_POST_VALID if g.post_valid else 0)
        | (F_TRIPPED if g.tripped else 0)
        | (F_POST_RESULT if loop.post_result is not None else 0)
        | (F_HEALTHY if healthy else 0)
        | (F_SNAP_POST if s.post_valid else 0)
    )
    return _STATE.pack(
        STATE,
        STATES.index(loop.state),
        STATES.index(s.state),
        FAULTS.index(fault.code) + 1 if fault else 0,
        FAULTS.index(alarm.code) + 1 if alarm else 0,
        flags,
        pub_seq & 0xFFFFFFFF,
        s.ticks,
        s.overruns,
        now_s,
        s.t_s,
        s.target_ua,
        s.amplitude_ua,
        s.measured_ua,
        _num(s.impedance_ohm),
        s.contact_quality_pct,
        s.charge_uc,
        s.net_charge_uc,
        s.peak_ua,
        s.active_s,
        _num(s.lease_left_ms),
        s.residual_ua,
        s.gap_max_ms,
    )


def fault(record, *, alarm: bool) -> bytes:
    n, t = _text(record.detail)
    return _FAULT.pack(FAULT, 1 if alarm else 0, FAULTS.index(record.code), n, record.t_s, t)


def event(t_s: float, kind: str, num: float = 0.0, code: str = "", text: str = "") -> bytes:
    n, t = _text(text)
    return _EVENT.pack(EVENT, n, t_s, _num(num), _name(kind), _name(code), t)


def post(passed: bool, failed_step: str, reason: str) -> bytes:
    n, t = _text(reason)
    return _POST.pack(POST, 1 if passed else 0, n, _name(failed_step), t)


def hist(late_counts, gap_counts) -> bytes:
    if len(late_counts) != HIST_BINS or len(gap_counts) != HIST_BINS:
        raise ValueError(f"a histogram has {HIST_BINS} bins")
    return _HIST.pack(HIST, *late_counts, *gap_counts)


# ------------------------------------------------------------------------------ decoding
def _index(seq: list, i: int, what: str):
    if not 0 <= i < len(seq):
        raise ChannelError(f"{what}: unknown value {i}")
    return seq[i]


def decode(buf: bytes):
    """One received message as a NamedTuple of this module; ChannelError if it is not valid."""
    if not buf:
        raise ChannelError("empty message")
    op = buf[0]
    size = SIZES.get(op)
    if size is None:
        raise ChannelError(f"unknown opcode 0x{op:02x}")
    if len(buf) != size:
        raise ChannelError(f"opcode 0x{op:02x}: {len(buf)} bytes, expected {size}")
    if op == COMMAND:
        _, cmd, flag, n, seq, a, b, c, d, t = _COMMAND.unpack(buf)
        try:
            cmd = Cmd(cmd)
        except ValueError:
            raise ChannelError(f"unknown command {cmd}") from None
        if flag not in (0, 1):
            raise ChannelError(f"command {cmd.name}: bad flag {flag}")
        return Command(cmd, seq, a, b, c, d, flag, _untext(t, n, "command text"))
    if op == REPLY:
        _, ok, n, seq, t_s, t = _REPLY.unpack(buf)
        if ok not in (0, 1):
            raise ChannelError(f"reply: bad ok {ok}")
        return Reply(seq, bool(ok), t_s, _untext(t, n, "reply text"))
    if op == HELLO:
        _, pid, tick_s, digest, sched = _HELLO.unpack(buf)
        return Hello(pid, tick_s, digest, _unname(sched, "hello sched"))
    if op == STATE:
        _, st, sst, fi, ai, flags, pub, ticks, overruns, *nums = _STATE.unpack(buf)
        return State(
            _index(STATES, st, "state"),
            _index(STATES, sst, "snapshot state"),
            _index(FAULTS, fi - 1, "fault") if fi else None,
            _index(FAULTS, ai - 1, "alarm") if ai else None,
            flags,
            pub,
            ticks,
            overruns,
            dict(zip(_STATE_FIELDS, nums, strict=True)),
        )
    if op == FAULT:
        _, which, fi, n, t_s, t = _FAULT.unpack(buf)
        if which not in (0, 1):
            raise ChannelError(f"fault: bad kind {which}")
        return FaultMsg(bool(which), _index(FAULTS, fi, "fault"), t_s, _untext(t, n, "detail"))
    if op == EVENT:
        _, n, t_s, num, kind, code, t = _EVENT.unpack(buf)
        return Event(
            t_s,
            num,
            _unname(kind, "event kind"),
            _unname(code, "event code"),
            _untext(t, n, "text"),
        )
    if op == HIST:
        counts = _HIST.unpack(buf)[1:]
        return HistMsg(counts[:HIST_BINS], counts[HIST_BINS:])
    _, passed, n, step, reason = _POST.unpack(buf)  # POST
    if passed not in (0, 1):
        raise ChannelError(f"post: bad passed {passed}")
    return PostMsg(bool(passed), _unname(step, "post step"), _untext(reason, n, "post reason"))
