"""Load benchmark: ``python -m hw.bench --load``.

The real daemon (``python -m hw --sim``, whatever process layout it has) runs a treatment in real
time for ``LOAD_S`` while, all at once:

(a) ``HOGS`` CPU-bound processes run at normal priority (``while True: pass``);
(b) one local client pipelines ``PIPELINE_REQUESTS`` ``status`` requests without reading a reply,
    on a fresh connection every ``PIPELINE_ROUND_S`` (the old one stays open, unread, until then);
(c) another asks for ``history limit=500`` and ``export_csv`` once a second (the history holds
    ``FLOOD_TREATMENTS`` records, seeded before the daemon starts);
(d) a kiosk-like client (this process) renews the lease every 100 ms and times each renewal; once
    a second it also reads ``status``. A fault is counted, acknowledged, and the treatment started
    again, so ``load_trips`` counts every trip of the run.

The loop's own figures come from the daemon's ``status`` ``loop`` object (hw.control.tickhist
histograms, read when the load starts and when it ends; their difference is the load's window). A
daemon without them (fc60cf5) reports ``null`` for those keys.

CPU figures of the daemon are read from /proc (utime + stime, children included: the daemon's
process and every descendant, see hw.bench.proctree). Prints a table, then one JSON line last.
"""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hw.bench.proctree import end_process, kill_leftovers, tree, tree_cpu_s

LOAD_S = 120.0
HOGS = 3
PIPELINE_REQUESTS = 3000
PIPELINE_ROUND_S = 10.0
HISTORY_EVERY_S = 1.0
LEASE_EVERY_S = 0.1
STATUS_EVERY = 10  # one status read per this many renewals


# --------------------------------------------------------------------------- the load
def _pipeliner(path: str, stop, n: int, out) -> None:
    from hw.bench.floods import _raw

    line = b'{"id":7,"cmd":"status"}\n'
    rounds = sent = 0
    s = None
    while not stop.is_set():
        old, s = s, _raw(path, name="pipeliner")
        if old is not None:
            old.close()
        view = memoryview(line * n)
        while view and not stop.is_set():
            try:
                k = s.send(view)
            except TimeoutError:
                continue  # throttled: the daemon stopped reading this connection
            except OSError:
                break  # closed by the daemon (a limit): allowed
            view, sent = view[k:], sent + k
        rounds += 1
        stop.wait(PIPELINE_ROUND_S)
    if s is not None:
        s.close()
    out.send({"rounds": rounds, "requests_sent": sent // len(line)})


def _history_client(path: str, stop, out) -> None:
    from hw.service.client import Client

    ok, errors, ms = 0, [], []
    c = None
    while not stop.is_set():
        t_round = time.monotonic()
        for cmd, args in (("history", {"limit": 500}), ("export_csv", {})):
            try:
                c = c or Client(path, "history", timeout_s=30.0)
                t0 = time.perf_counter()
                c.request(cmd, timeout_s=30.0, **args)
                ms.append((time.perf_counter() - t0) * 1000.0)
                ok += 1
            except Exception as e:  # noqa: BLE001 - reported; the next round reconnects
                errors.append(f"{cmd}: {e!r}"[:200])
                if c is not None:
                    c.close()
                c = None
        stop.wait(max(0.0, HISTORY_EVERY_S - (time.monotonic() - t_round)))
    if c is not None:
        c.close()
    out.send({"ok": ok, "errors": errors, "ms_max": max(ms, default=None)})


def _hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _end_mp(p, stop) -> None:
    stop.set()
    p.join(40)  # a history request in flight may take its 30 s timeout
    if p.is_alive():
        p.kill()
        p.join(5)


def _loop(status: dict) -> dict | None:
    """The status's ``loop`` object with dense histograms, or None (a daemon without it)."""
    from hw.control import tickhist as th

    lp = status.get("loop")
    if not isinstance(lp, dict) or "ticks" not in lp:
        return None
    late, gap = lp.get("late_us_hist"), lp.get("gap_us_hist")
    return {
        "ticks": lp["ticks"],
        "overruns": lp.get("overruns"),
        "gap_max_ms": lp.get("gap_max_ms"),
        "late": th.dense(late) if late else None,
        "gap": th.dense(gap) if gap else None,
    }


def loop_window(before: dict | None, after: dict | None) -> dict:
    """The loop's figures between two ``status`` readings (None where the daemon has none)."""
    from hw.control import tickhist as th

    out = {"ticks": None, "overruns": None, "gap_ms_max": None, "gap_how": "n/a"}
    out |= {"late_us_p999": None, "late_us_max": None}
    if before is None or after is None:
        return out
    if after["ticks"] < before["ticks"]:
        before = {"ticks": 0, "overruns": 0, "gap_max_ms": 0.0, "late": None, "gap": None}
        out["gap_how"] = "loop restarted: since its restart"
    out["ticks"] = after["ticks"] - before["ticks"]
    if after["overruns"] is not None:
        out["overruns"] = after["overruns"] - (before["overruns"] or 0)
    zero = [0] * th.BINS
    if after["late"] is not None:
        late = th.diff(after["late"], before["late"] or zero)
        out["late_us_p999"] = th.quantile_upper_us(late, 0.999)
        out["late_us_max"] = th.max_upper_us(late)
    g0, g1 = before["gap_max_ms"], after["gap_max_ms"]
    if g1 is not None and g0 is not None and g1 > g0:
        out["gap_ms_max"], out["gap_how"] = g1, "exact (the max since start rose in the run)"
    elif after["gap"] is not None:
        hist_max = th.max_upper_us(th.diff(after["gap"], before["gap"] or zero))
        if hist_max is not None:
            ms = hist_max / 1000.0 if g1 is None else min(hist_max / 1000.0, g1)
            out["gap_ms_max"], out["gap_how"] = ms, "at most (histogram bin's upper edge)"
    elif g1 is not None:
        out["gap_ms_max"], out["gap_how"] = g1, "at most (max since the daemon started)"
    return out


def _kiosk_run(kiosk, seconds: float) -> dict:
    """Renew every 100 ms for ``seconds``; read status every second; count and recover trips.
    A renewal without a reply counts with the time it waited (the client's 5 s timeout)."""
    from hw.bench.floods import _ensure_running

    rtt, errors, trips = [], [], []
    acc = {"not_held": 0, "polls": 0, "running": 0, "charge_uc": 0.0}
    last = {"charge": None, "fault": None}
    t_start = time.monotonic()

    def read_status(recover: bool) -> dict | None:
        try:
            st = kiosk.request("status")
        except Exception as e:  # noqa: BLE001 - the daemon is gone or wedged: a finding
            errors.append(f"status: {e!r}"[:200])
            return None
        acc["polls"] += 1
        acc["running"] += st["state"] == "running"
        ch = st.get("charge_uc") or 0.0
        if last["charge"] is not None and ch > last["charge"]:
            acc["charge_uc"] += ch - last["charge"]
        last["charge"] = ch
        fault = st.get("fault")
        if fault and fault != last["fault"]:
            trips.append({"t_s": round(time.monotonic() - t_start, 1), **fault})
            last["fault"] = fault
        if fault and recover:  # acknowledge, self-test, start again (tried at every read)
            try:
                _ensure_running(kiosk)
                last["fault"] = last["charge"] = None
            except Exception as e:  # noqa: BLE001 - reported; the next read tries again
                if len(errors) < 20:
                    errors.append(f"restart after {fault.get('code')}: {e!r}"[:200])
        return st

    end, next_t, i = t_start + seconds, t_start, 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            r = kiosk.request("lease")
            acc["not_held"] += r.get("held") is not True
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"lease: {e!r}"[:200])
        rtt.append((time.perf_counter() - t0) * 1000.0)
        i += 1
        if i % STATUS_EVERY == 0 and read_status(recover=True) is None:
            break
        next_t = max(next_t + LEASE_EVERY_S, time.monotonic())
        time.sleep(max(0.0, next_t - time.monotonic()))
    seconds_run = time.monotonic() - t_start
    final = read_status(recover=False)  # a trip since the last read counts too
    return {
        "rtt_ms": rtt,
        "not_held": acc["not_held"],
        "errors": errors,
        "trips": trips,
        "running_pct": 100.0 * acc["running"] / acc["polls"] if acc["polls"] else 0.0,
        "charge_uc": acc["charge_uc"],
        "seconds": seconds_run,
        "final": final or {"state": "unknown"},
    }


def load_figures(seconds: float = LOAD_S, hogs: int = HOGS, sim_time: bool = False) -> dict:
    """The run described in the module docstring; every process it starts ends with it
    (``sim_time``: the daemon's loop on --sim-time, for the test suite)."""
    import multiprocessing

    from hw.bench.daemon_driver import _run_treatment, spawned_daemon
    from hw.bench.floods import FLOOD_PROGRAM, seed_history
    from hw.bench.proctree import host_steal_s, steal_ms_between
    from hw.bench.stats import pct as _pct

    ctx = multiprocessing.get_context("fork")
    seen: dict[int, tuple[int, int]] = {}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        seed_history(Path(tmp) / "history.db")
        stack.callback(kill_leftovers, seen)  # runs after the daemon's own exit below
        proc, sock, kiosk = stack.enter_context(spawned_daemon(tmp, "kiosk", sim_time))
        _run_treatment(kiosk, FLOOD_PROGRAM)
        seen.update(tree(proc.pid))
        before = _loop(kiosk.request("status"))
        cpu0, t0 = tree_cpu_s(proc.pid), time.monotonic()
        for _ in range(hogs):
            stack.callback(end_process, _hog(), 5.0)
        results = {}
        for name, target, args in (
            ("pipeliner", _pipeliner, (PIPELINE_REQUESTS,)),
            ("history", _history_client, ()),
        ):
            stop, (rx, tx) = ctx.Event(), ctx.Pipe(duplex=False)
            p = ctx.Process(target=target, args=(str(sock), stop, *args, tx), daemon=True)
            p.start()
            stack.callback(_end_mp, p, stop)
            results[name] = (p, stop, rx)
        steal0 = host_steal_s()
        kiosk_out = _kiosk_run(kiosk, seconds)
        steal1 = host_steal_s()
        seen.update(tree(proc.pid))
        after = _loop(kiosk_out["final"])
        cpu_pct = 100.0 * (tree_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        final = kiosk_out["final"]
        clients = {}
        for name, (p, stop, rx) in results.items():
            _end_mp(p, stop)
            clients[name] = rx.recv() if rx.poll(1.0) else {"error": "no report"}
        if final["state"] == "running":
            with contextlib.suppress(Exception):  # it may have tripped since: nothing to stop
                kiosk.request("stop")
    rtt = kiosk_out["rtt_ms"]
    win = loop_window(before, after)
    return {
        "load_trips": len(kiosk_out["trips"]),
        "load_trip_codes": [t.get("code") for t in kiosk_out["trips"]],
        "load_trip_detail": kiosk_out["trips"],
        "lease_rtt_ms_max": max(rtt, default=None),
        "lease_rtt_ms_p50": _pct(rtt, 0.5) if rtt else None,
        "lease_rtt_ms_p99": _pct(rtt, 0.99) if rtt else None,
        "lease_renewals": len(rtt),
        "lease_not_held": kiosk_out["not_held"],
        "loop_gap_ms_max": win["gap_ms_max"],
        "loop_gap_how": win["gap_how"],
        "tick_late_us_p999": win["late_us_p999"],
        "tick_late_us_max": win["late_us_max"],
        "loop_ticks": win["ticks"],
        "loop_overruns": win["overruns"],
        "daemon_cpu_load_pct": cpu_pct,
        "load_seconds": kiosk_out["seconds"],
        "load_hogs": hogs,
        "treatment_running_pct": kiosk_out["running_pct"],
        "treatment_charge_uc": kiosk_out["charge_uc"],
        "treatment_state_end": final["state"],
        "pipelined": clients["pipeliner"],
        "history_client": clients["history"],
        "errors": kiosk_out["errors"],
        "host_steal_ms": steal_ms_between(steal0, steal1),
    }


def _fmt(v, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def run(quick: bool = False, seconds: float | None = None, sim_time: bool = False) -> int:
    """The CLI of ``python -m hw.bench --load``: table, then the JSON line. ``quick``: 5 s and
    one CPU hog (for the test suite)."""
    seconds = seconds if seconds is not None else (5.0 if quick else LOAD_S)
    t_start = time.perf_counter()

    def on_term(_signum, _frame):
        raise SystemExit(143)  # unwinds through every clean-up below

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        r = load_figures(seconds, 1 if quick else HOGS, sim_time)
    finally:
        signal.signal(signal.SIGTERM, old)
    counts = collections.Counter(c or "?" for c in r["load_trip_codes"])
    codes = ", ".join(f"{c} x{n}" if n > 1 else c for c, n in counts.items()) or "none"
    hist = r["history_client"]
    rows = [
        (
            "load",
            f"{r['load_seconds']:.0f} s: {r['load_hogs']} CPU hogs, {PIPELINE_REQUESTS} unread "
            f"requests every {PIPELINE_ROUND_S:g} s, history 500 + CSV export every second",
            "",
        ),
        ("trips during the run", f"{r['load_trips']} ({codes})", "= 0"),
        (
            "lease round trip p50 / p99 / max",
            f"{_fmt(r['lease_rtt_ms_p50'])} / {_fmt(r['lease_rtt_ms_p99'])} / "
            f"{_fmt(r['lease_rtt_ms_max'])} ms ({r['lease_renewals']} renewals, "
            f"{r['lease_not_held']} not held)",
            "max <= 100",
        ),
        (
            "loop gap max",
            _fmt(r["loop_gap_ms_max"], ".2f", " ms") + f" ({r['loop_gap_how']})",
            "<= 5",
        ),
        (
            "tick lateness p99.9 / max",
            f"{_fmt(r['tick_late_us_p999'], '.0f')} / {_fmt(r['tick_late_us_max'], '.0f')} us "
            "(bin upper edges)",
            "",
        ),
        (
            "loop overruns",
            f"{_fmt(r['loop_overruns'], 'd')} of {_fmt(r['loop_ticks'], 'd')} ticks",
            "",
        ),
        ("daemon CPU under load", f"{r['daemon_cpu_load_pct']:.0f} % of one core", ""),
        ("host CPU steal in the run", _fmt(r["host_steal_ms"], ".0f", " ms (all CPUs)"), ""),
        (
            "treatment",
            f"running in {r['treatment_running_pct']:.0f} % of status reads, "
            f"{r['treatment_charge_uc']:.0f} uC, ended {r['treatment_state_end']}",
            "",
        ),
        (
            "pipelining client",
            f"{r['pipelined'].get('requests_sent')} requests sent unread in "
            f"{r['pipelined'].get('rounds')} rounds",
            "",
        ),
        (
            "history/export client",
            f"{hist.get('ok')} replies, {len(hist.get('errors') or [])} errors, "
            f"slowest {_fmt(hist.get('ms_max'), '.0f', ' ms')}",
            "",
        ),
    ]
    if sim_time:
        rows.append(("daemon on --sim-time", "yes: not figures of record", ""))
    for e, n in collections.Counter(e[:100] for e in r["errors"]).items():
        rows.append((f"  error x{n}", e, ""))
    width = max(len(a) for a, _, _ in rows)
    print(f"{'measure':<{width}}  {'value':<60}  bound")
    print("-" * (width + 75))
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:<60}  {c}")
    print(f"(load bench took {time.perf_counter() - t_start:.1f} s)")
    keys = (
        "load_trips",
        "load_trip_codes",
        "lease_rtt_ms_max",
        "lease_rtt_ms_p50",
        "lease_rtt_ms_p99",
        "lease_renewals",
        "lease_not_held",
        "loop_gap_ms_max",
        "tick_late_us_p999",
        "loop_overruns",
        "daemon_cpu_load_pct",
        "load_seconds",
        "treatment_running_pct",
        "treatment_charge_uc",
        "host_steal_ms",
    )
    out = {k: (round(r[k], 3) if isinstance(r[k], float) else r[k]) for k in keys}
    out["pipelined_requests_sent"] = r["pipelined"].get("requests_sent")
    out["history_replies"] = hist.get("ok")
    out["history_errors"] = len(hist.get("errors") or [])
    if sim_time:
        out["daemons_on_sim_time"] = True  # not figures of record (see python -m hw.bench --help)
    print(json.dumps(out, separators=(",", ":")))
    sys.stdout.flush()
    return 0
