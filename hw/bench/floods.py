"""Floods of the daemon's socket (part of ``python -m hw.bench``, issue 6).

Each flood runs in its own process, on its own connection(s), while a kiosk-like client holding
the lease of a running treatment renews it every 100 ms: its round trips, and whether the
treatment survived, are the figures.
"""

from __future__ import annotations

import json
import time

from hw.bench.daemon_driver import _run_treatment, _wait_ready, spawned_daemon

FLOOD_S = 3.0  # each flood runs this long while the kiosk-like client renews its lease
FLOOD_PROGRAM = "quick-tone"  # long enough (300 s) to outlive every flood in turn
FLOOD_TREATMENTS = 1000  # records in the history for the history and export floods
FLOOD_IDLE_CONNECTIONS = 1100


def _raw(path, hello: bool = True, name: str = "flood", rcvbuf: int | None = None):
    import socket as _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, rcvbuf)
    s.connect(str(path))
    s.settimeout(0.2)
    if hello:
        args = {"protocol": 1, "client": name}
        s.sendall((json.dumps({"id": 0, "cmd": "hello", "args": args}) + "\n").encode())
    return s


def _send_until(s, data: bytes, stop) -> None:
    """sendall that gives up when ``stop`` is set (a throttled sender blocks)."""
    view = memoryview(data)
    while view and not stop.is_set():
        try:
            view = view[s.send(view) :]
        except TimeoutError:
            continue
        except OSError:
            return  # closed by the daemon (limits): allowed


def _drain(s, stop) -> int:
    """Read what has come, until nothing comes for the socket's timeout, EOF, or ``stop``: a
    daemon that keeps sending (2000 queued exports) must not keep the flood past its end."""
    got = 0
    try:
        while not stop.is_set():
            chunk = s.recv(1 << 20)
            if not chunk:
                return got
            got += len(chunk)
    except (TimeoutError, BlockingIOError, OSError):
        return got


def _flood_newlines(path, stop) -> list:
    s = _raw(path, hello=False)  # bare newlines, never a hello
    while not stop.is_set():
        _send_until(s, b"\n" * 65536, stop)
    return [s]


def _flood_programs(path, stop) -> list:
    s = _raw(path, rcvbuf=4096)  # asks for ~6 MB of program lists and never reads
    _send_until(
        s, "".join(f'{{"id":{i},"cmd":"programs"}}\n' for i in range(1, 2001)).encode(), stop
    )
    stop.wait()
    return [s]


def _flood_lease(path, stop) -> list:
    s = _raw(path, name="not-the-holder")  # pipelines renewals of a lease it does not hold
    batch = b'{"id":1,"cmd":"lease"}\n' * 200
    while not stop.is_set():
        _send_until(s, batch, stop)
        _drain(s, stop)
    return [s]


def _flood_history(path, stop) -> list:
    s = _raw(path)  # the largest history reply, over and over, read as fast as it comes
    batch = b'{"id":1,"cmd":"history","args":{"limit":500}}\n' * 4
    while not stop.is_set():
        _send_until(s, batch, stop)
        _drain(s, stop)
    return [s]


def _flood_export(path, stop) -> list:
    s = _raw(path)  # 2000 CSV exports queued at once, read lazily
    _send_until(s, b'{"id":1,"cmd":"export_csv"}\n' * 2000, stop)
    while not stop.is_set():
        _drain(s, stop)
    return [s]


def _flood_idle(path, stop) -> list:
    socks = []  # connections that never say hello (the daemon closes the oldest past its cap)
    for _ in range(FLOOD_IDLE_CONNECTIONS):
        if stop.is_set():
            break
        try:
            socks.append(_raw(path, hello=False))
        except OSError:
            break
    stop.wait()
    return socks


def _no_flood(path, stop) -> list:
    stop.wait()  # the baseline: the kiosk alone (a trip here is the host, not a flood)
    return []


FLOODS = {
    "none": _no_flood,
    "newlines_no_hello": _flood_newlines,
    "programs_unread": _flood_programs,
    "lease_non_holder": _flood_lease,
    "history_500": _flood_history,
    "export_csv_2000": _flood_export,
    "idle_1100": _flood_idle,
}


def seed_history(db_path, treatments: int = FLOOD_TREATMENTS) -> None:
    """``treatments`` finished records, dated three days ago (today's time budget stays free)."""
    from hw.history import History, TreatmentSummary, ZoneSummary

    h = History(db_path, clock=lambda: time.time() - 3 * 86400)
    h.open()
    try:
        s = TreatmentSummary(60.0, 9000.0, 1.0, 150.0, 200.0, 95.0)
        zones = [ZoneSummary(z, 30.0, 4500.0, 150.0, 200.0, 95.0) for z in ("cheeks", "jawline")]
        for _ in range(treatments):
            h.finish_treatment(h.begin_treatment("quick-tone", "Quick tone"), "finished", s, zones)
    finally:
        h.close()


def raise_fd_limit(wanted: int = 4096) -> None:
    """Soft RLIMIT_NOFILE up to ``wanted`` (the idle flood opens 1100 sockets here)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _ensure_running(kiosk, program: str = FLOOD_PROGRAM) -> None:
    st = kiosk.request("status")
    if st["state"] == "running":
        return
    if st["state"] == "fault":
        kiosk.request("acknowledge")
    _wait_ready(kiosk)
    _run_treatment(kiosk, program)


def _flood_main(kind: str, sock_path: str, stop) -> None:
    for s in FLOODS[kind](sock_path, stop):
        s.close()


def run_floods(sock_path, kiosk, kinds=tuple(FLOODS), seconds: float = FLOOD_S) -> dict:
    """Each flood of ``kinds`` in turn on its own connection(s) while ``kiosk`` (a hw.service.client
    Client holding the lease of a running treatment) renews it every 100 ms.

    Returns per flood: the kiosk's round trips (ms), whether every renewal answered
    ``held: true``, and the status after it (the treatment must still be running, no fault).
    """
    import multiprocessing

    raise_fd_limit()
    # Each flood runs in its own process, as another local client would: in this process it would
    # compete with the kiosk-like client for this interpreter's GIL and distort its round trips.
    ctx = multiprocessing.get_context("fork")
    out = {}
    for kind in kinds:
        try:
            _ensure_running(kiosk)  # after a trip: acknowledge, self-test, start again
        except Exception:  # noqa: BLE001
            if not out:
                raise
            # It could not be brought back (the trip that ended the last flood, or another one
            # during the recovery): stop here; the last flood's status says what happened.
            break
        stop = ctx.Event()
        p = ctx.Process(target=_flood_main, args=(kind, str(sock_path), stop), daemon=True)
        p.start()
        rtt, held, errors = [], True, []
        end = time.monotonic() + seconds
        # Renew every 100 ms until the flood process has ended and its sockets are closed (a
        # lease left unrenewed by this harness would expire by itself).
        while not errors and (time.monotonic() < end or p.is_alive()):
            if time.monotonic() >= end:
                stop.set()
            t0 = time.perf_counter()
            try:
                r = kiosk.request("lease")
            except Exception as e:  # noqa: BLE001 - reported, the next flood still runs
                errors.append(repr(e))
                break
            rtt.append((time.perf_counter() - t0) * 1000.0)
            held = held and r.get("held") is True
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))
        stop.set()
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)
        status = kiosk.request("status")
        out[kind] = {"rtt_ms": rtt, "held": held, "errors": errors, "status": status}
    return out


def flood_figures(seconds: float = FLOOD_S, sim_time: bool = False) -> dict:
    """A real daemon process with 1000 treatments on record runs ``FLOOD_PROGRAM``; the worst
    lease round trip of the kiosk-like client over every flood, and whether the treatment
    survived them all (``sim_time``: the daemon's loop on --sim-time)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        seed_history(Path(tmp) / "history.db")
        with spawned_daemon(tmp, "kiosk", sim_time) as (_proc, sock, c):
            _run_treatment(c, FLOOD_PROGRAM)
            per = run_floods(sock, c, kinds=tuple(FLOODS), seconds=seconds)
            if c.request("status")["state"] == "running":
                c.request("stop")
    worst = {k: max(v["rtt_ms"], default=float("inf")) for k, v in per.items()}
    survived = {
        k: v["held"]
        and not v["errors"]
        and v["status"]["state"] == "running"
        and v["status"]["fault"] is None
        for k, v in per.items()
    }
    return {
        "flood_lease_rtt_ms_max": max(v for k, v in worst.items() if k != "none"),
        "flood_worst_ms": worst,
        "flood_survived": survived,
        "flood_faults": {k: v["status"]["fault"] for k, v in per.items() if v["status"]["fault"]},
    }
