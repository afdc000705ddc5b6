"""The daemon's socket protocol, version 1: newline-delimited JSON over a Unix stream socket.

Client to daemon, one request per line (at most ``MAX_LINE_BYTES`` bytes)::

    {"id": 7, "cmd": "set_level", "args": {"level": 4}}

Daemon to client: a reply per request, with the same id, and unsolicited events::

    {"id": 7, "ok": true, "result": {...}}
    {"id": 7, "ok": false, "error": {"code": "OUT_OF_RANGE", "message": "level must be 1..6"}}
    {"event": "status", "data": {...}}          (about 20 Hz to subscribed clients)
    {"event": "cue" | "fault" | "treatment_finished" | "contact_lost" | ..., "data": {...}}

The first request of a connection must be ``hello`` with ``"protocol": 1``. Everything is validated
here before anything acts on it: unknown commands, unknown or missing arguments, wrong types and
values out of range get an error reply and change nothing. See docs/protocol.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 8192
MAX_ID_LEN = 64
# No request nests deeper than 2; the bound keeps json.loads (which recurses) far from the
# interpreter's recursion limit, where a finalizer run by the garbage collector would fail.
MAX_NESTING = 16
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class ProtocolError(Exception):
    """A request that is refused before anything acts on it."""

    def __init__(self, code: str, message: str, req_id: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id


# Error codes (stable: clients switch on them).
BAD_JSON = "BAD_JSON"
BAD_REQUEST = "BAD_REQUEST"
UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
BAD_ARGUMENT = "BAD_ARGUMENT"
OUT_OF_RANGE = "OUT_OF_RANGE"
TOO_LARGE = "TOO_LARGE"
NOT_HELLO = "NOT_HELLO"
VERSION = "VERSION"
REFUSED = "REFUSED"  # valid, but not possible now (the message says why)
LEASE_HELD = "LEASE_HELD"  # another client controls the running treatment
NOT_FOUND = "NOT_FOUND"
NOT_SIM = "NOT_SIM"  # a command of the simulated board, sent to a daemon on real hardware
INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class Arg:
    kind: type | tuple[type, ...]
    required: bool = True
    lo: float | None = None
    hi: float | None = None
    max_len: int | None = None
    choices: tuple | None = None


def _int(lo: int, hi: int, required: bool = True) -> Arg:
    return Arg(int, required, lo, hi)


def _str(max_len: int, required: bool = True, choices: tuple | None = None) -> Arg:
    return Arg(str, required, max_len=max_len, choices=choices)


def _bool(required: bool = False) -> Arg:
    return Arg(bool, required)


#: The first-use contraindication questions, each answered true ("yes, this applies") or false.
SCREENING_QUESTIONS = (
    "implant",  # an implanted electronic device such as a pacemaker
    "epilepsy",
    "pregnancy",
    "cancer_or_broken_skin",  # in the area to be treated
    "recent_surgery_or_injectables",  # in the face
    "under_18",
)
SIM_ACTIONS = ("inject", "clear", "skin", "state")


# Every command with its arguments. Controller commands need the treatment lease when one runs.
COMMANDS: dict[str, dict[str, Arg]] = {
    "hello": {
        # Any whole number: one that is not PROTOCOL_VERSION is answered VERSION, not OUT_OF_RANGE.
        "protocol": Arg(int),
        "client": _str(40),
        "status": _bool(),  # subscribe to the status stream
        "events": _bool(),  # subscribe to events (default true)
    },
    "subscribe": {"status": _bool(), "events": _bool()},
    "programs": {},
    "status": {},
    "start": {"program": _str(40), "level": _int(1, 20, required=False)},
    "set_level": {"level": _int(1, 20)},
    "level_up": {},
    "level_down": {},
    "pause": {},
    "resume": {},
    "stop": {},
    "estop": {},
    "acknowledge": {},
    "lease": {},
    "self_test": {},
    "history": {"limit": _int(1, 500, required=False)},
    "treatment": {"id": _int(1, 2**31)},
    "totals": {},
    "events": {"since_id": _int(0, 2**62, required=False), "limit": _int(1, 1000, required=False)},
    "export_csv": {"what": _str(20, required=False, choices=("treatments", "zones"))},
    # Every question must be answered, each with true or false (see SCREENING_QUESTIONS).
    "screening": {"answers": Arg(dict, True, choices=SCREENING_QUESTIONS)},
    "screening_status": {},
    "set_sound": {"on": _bool(required=True)},  # the buzzer's cues (a preference)
    "service_info": {},  # the self-test's steps, the limits in force with their files, versions
    # Only with --sim (the desktop panel): faults and skins are checked by the daemon.
    "sim": {
        "action": _str(10, choices=SIM_ACTIONS),
        "fault": _str(40, required=False),
        "skin": _str(20, required=False),
    },
    "bye": {},
}

CONTROL_COMMANDS = frozenset({"start", "set_level", "level_up", "level_down", "pause", "resume"})


@dataclass(frozen=True)
class Request:
    id: Any
    cmd: str
    args: dict


def _check_id(req_id: Any) -> Any:
    if isinstance(req_id, bool) or req_id is None:
        raise ProtocolError(BAD_REQUEST, "id must be an integer or a short string")
    if isinstance(req_id, int):
        if not -(2**53) <= req_id <= 2**53:
            raise ProtocolError(BAD_REQUEST, "id out of range")
        return req_id
    if isinstance(req_id, str) and 0 < len(req_id) <= MAX_ID_LEN and req_id.isprintable():
        return req_id
    raise ProtocolError(BAD_REQUEST, "id must be an integer or a short printable string")


def _check_arg(cmd: str, name: str, spec: Arg, value: Any) -> Any:
    where = f"{cmd}.{name}"
    if spec.kind is int:
        if not _is_int(value):
            raise ProtocolError(BAD_ARGUMENT, f"{where} must be a whole number")
    elif spec.kind is bool:
        if not isinstance(value, bool):
            raise ProtocolError(BAD_ARGUMENT, f"{where} must be true or false")
    elif spec.kind is dict:
        # An object with exactly the keys in ``choices``, each true or false.
        if not isinstance(value, dict):
            raise ProtocolError(BAD_ARGUMENT, f"{where} must be an object")
        keys = set(value)
        want = set(spec.choices or ())
        if keys != want:
            missing, extra = sorted(want - keys), sorted(keys - want)
            raise ProtocolError(
                BAD_ARGUMENT,
                f"{where} must answer exactly {', '.join(spec.choices or ())}"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {', '.join(k[:40] for k in extra)})" if extra else ""),
            )
        for k, v in value.items():
            if not isinstance(v, bool):
                raise ProtocolError(BAD_ARGUMENT, f"{where}.{k} must be true or false")
        return dict(value)
    elif spec.kind is str:
        if not isinstance(value, str):
            raise ProtocolError(BAD_ARGUMENT, f"{where} must be a string")
        if spec.max_len is not None and len(value) > spec.max_len:
            raise ProtocolError(OUT_OF_RANGE, f"{where} is longer than {spec.max_len}")
        if not value.isprintable():
            raise ProtocolError(BAD_ARGUMENT, f"{where} has control characters")
    if spec.choices is not None and spec.kind is not dict and value not in spec.choices:
        raise ProtocolError(OUT_OF_RANGE, f"{where} must be one of {', '.join(spec.choices)}")
    if spec.lo is not None and value < spec.lo or spec.hi is not None and value > spec.hi:
        raise ProtocolError(OUT_OF_RANGE, f"{where} must be {spec.lo:g}..{spec.hi:g}")
    return value


def _reject_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    # The stdlib keeps the last of duplicate keys: {"level":1,"level":9} would mean 9 to us and 1
    # to a reviewer of the log. Refuse it.
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


def _is_int(value: Any) -> bool:
    """A JSON whole number (true/false are not numbers here, nor is 1.0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_nesting(text: str) -> None:
    """Refuse (ValueError) JSON text whose arrays and objects nest deeper than MAX_NESTING,
    before it is parsed. Brackets inside strings do not count."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return  # every request: too few brackets to be deep
    depth = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_NESTING:
            raise ValueError(f"arrays and objects nest deeper than {MAX_NESTING} levels")


def parse_request(line: bytes) -> Request:
    """Validate one request line. Raises ProtocolError (with the id when one could be read)."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(TOO_LARGE, f"a request may be at most {MAX_LINE_BYTES} bytes")
    try:
        text = line.decode("utf-8")
        _check_nesting(text)
        msg = json.loads(text, parse_constant=_reject_constants, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise ProtocolError(BAD_REQUEST, str(e)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(BAD_JSON, f"not valid JSON: {str(e)[:120]}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_REQUEST, "a request must be a JSON object")
    req_id = msg.get("id")
    try:
        req_id = _check_id(req_id)
    except ProtocolError as e:
        raise ProtocolError(e.code, e.message, None) from None
    extra = set(msg) - {"id", "cmd", "args", "v"}
    if extra:
        raise ProtocolError(BAD_REQUEST, f"unknown fields: {', '.join(sorted(extra))}", req_id)
    if "v" in msg and not (_is_int(msg["v"]) and msg["v"] == PROTOCOL_VERSION):
        raise ProtocolError(VERSION, f"this daemon speaks protocol {PROTOCOL_VERSION}", req_id)
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(BAD_REQUEST, "cmd must be a string", req_id)
    if cmd not in COMMANDS:
        raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {cmd[:40]!r}", req_id)
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(BAD_ARGUMENT, "args must be an object", req_id)
    schema = COMMANDS[cmd]
    unknown = set(args) - set(schema)
    if unknown:
        names = ", ".join(sorted(str(u)[:40] for u in unknown))
        raise ProtocolError(BAD_ARGUMENT, f"{cmd} takes no argument(s) {names}", req_id)
    clean = {}
    for name, spec in schema.items():
        if name not in args:
            if spec.required:
                raise ProtocolError(BAD_ARGUMENT, f"{cmd} needs {name}", req_id)
            continue
        try:
            clean[name] = _check_arg(cmd, name, spec, args[name])
        except ProtocolError as e:
            raise ProtocolError(e.code, e.message, req_id) from None
    if cmd == "hello" and clean["protocol"] != PROTOCOL_VERSION:
        raise ProtocolError(VERSION, f"this daemon speaks protocol {PROTOCOL_VERSION}", req_id)
    return Request(req_id, cmd, clean)


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: never send them (a client must be able to parse every line).
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def encode(message: dict) -> bytes:
    return (json.dumps(_clean(message), separators=(",", ":"), allow_nan=False) + "\n").encode()


def reply_ok(req_id: Any, result: Any = None) -> bytes:
    return encode({"id": req_id, "ok": True, "result": result if result is not None else {}})


def reply_error(req_id: Any, code: str, message: str) -> bytes:
    return encode({"id": req_id, "ok": False, "error": {"code": code, "message": message}})


def event(name: str, data: dict) -> bytes:
    return encode({"event": name, "data": data})


def _fragment(value: Any) -> bytes:
    return json.dumps(_clean(value), separators=(",", ":"), allow_nan=False).encode()


def reply_ok_chunked(req_id: Any, result: Any, chunk_items: int, chunk_chars: int) -> bytes:
    """The same bytes as ``reply_ok(req_id, result)``, encoded in pieces: a list ``chunk_items``
    elements per json.dumps call, a ``{"csv": text}`` result ``chunk_chars`` characters per call.

    The C JSON encoder holds the GIL for a whole call (8-29 ms for 500 history records: long
    enough to stall the 2 kHz loop); between pieces other threads get it back.
    """
    head = b'{"id":' + _fragment(req_id) + b',"ok":true,"result":'
    if isinstance(result, list):
        parts = [head, b"["]
        for i in range(0, len(result), chunk_items):
            if i:
                parts.append(b",")
            parts.append(_fragment(result[i : i + chunk_items])[1:-1])
        parts.append(b"]}\n")
        return b"".join(parts)
    if isinstance(result, dict) and list(result) == ["csv"] and isinstance(result["csv"], str):
        text = result["csv"]
        parts = [head, b'{"csv":"']
        for i in range(0, len(text), chunk_chars):
            parts.append(_fragment(text[i : i + chunk_chars])[1:-1])
        parts.append(b'"}}\n')
        return b"".join(parts)
    return reply_ok(req_id, result)
