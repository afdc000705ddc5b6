"""The commands of ``python -m hw.ctl`` (``cmd_<name>(client, args) -> exit status``): each sends
its requests to the daemon and prints the answer (hw/tools/ctl_format.py makes the text)."""

from __future__ import annotations

import json
import signal
import sys
import time

from hw.service.client import Client, DaemonError
from hw.tools.ctl_format import _local, _mmss, _num, _table, event_line, status_text
from hw.tools.ctl_live import PLAIN_REFRESH_S, Keys, LiveView

LEASE_RENEW_S = 0.1  # the daemon's lease is 300 ms: renew three times within it
TREATING = ("contact_check", "ramp_up", "running", "paused", "ramp_down")

# The self-test's steps in the order hw/safety/selftest.py runs them (a step runs only if all
# before passed).
POST_STEPS = (
    ("reference", "ADC reference and compliance rail in range"),
    ("zero", "no current with the output disabled (ADC zero offset)"),
    ("latch_rearm", "hardware over-current latch re-arms"),
    ("calibration", "+/- check current into the test load reads back"),
    ("latch_trip", "hardware latch trips above its threshold and cuts"),
    ("deadman", "dead-man monostable drops the relay"),
    ("dac_shutdown", "DAC /SHDN line cuts the current without SPI"),
    ("relay", "no current with the relay commanded open"),
    ("estop_interlock", "the e-stop element in the relay coil's chain cuts without software"),
    ("charger_interlock", "the charger element in the relay coil's chain cuts without software"),
)


def drain_events(c: Client) -> list[dict]:
    out = list(c.events)
    c.events.clear()
    return out


def cmd_status(c: Client, args) -> int:
    if not args.live:
        st = c.request("status")
        print(json.dumps(st, indent=2) if args.json else status_text(st))
        return 0
    c.request("subscribe", status=True, events=True)
    view = LiveView()
    try:
        while True:
            c.read_message(0.1)
            for ev in drain_events(c):
                if args.json:
                    print(json.dumps(ev), flush=True)
                else:
                    view.message(event_line(ev))
            if not args.json:
                view.status(c.last_status)
            elif c.last_status is not None and time.monotonic() >= view.next_draw:
                view.next_draw = time.monotonic() + PLAIN_REFRESH_S
                print(json.dumps({"event": "status", "data": c.last_status}), flush=True)
    except KeyboardInterrupt:
        view.close()
        return 0


def cmd_self_test(c: Client, args) -> int:
    before = c.request("events", limit=1)
    since = before[-1]["id"] if before else 0
    t0 = time.monotonic()
    r = c.request("self_test")
    print(f"self-test started (state {r['state']})")
    final = None
    while final is None and time.monotonic() - t0 < 15.0:
        c.read_message(0.1)
        for ev in drain_events(c):
            print(f"  +{time.monotonic() - t0:5.2f} s  {event_line(ev)}")
            if ev["event"] == "state" and ev["data"]["to"] in ("ready", "fault", "idle"):
                final = ev["data"]["to"]
    if final is None:
        raise DaemonError("TIMEOUT", "the self-test did not finish within 15 s")
    elapsed = time.monotonic() - t0
    st = c.request("status")
    post = st["post"]
    records = [e for e in c.request("events", since_id=since) if e["kind"] == "post"]
    reason = records[-1]["message"] if records else None
    failed = post["failed_step"] if post["passed"] is False else None
    if failed is not None and st.get("fault"):
        reason = reason or st["fault"]["detail"]
    names = [name for name, _ in POST_STEPS]
    fail_at = names.index(failed) if failed in names else len(names)
    for i, (name, what) in enumerate(POST_STEPS):
        if failed is None or i < fail_at:
            verdict = "pass"
        elif i == fail_at:
            verdict = "FAIL"
        else:
            verdict = "not run"
        print(f"  {name:<13} {verdict:<8} {what}")
        if i == fail_at and failed is not None:
            print(f"  {'':<13} {'':<8} -> {reason}")
    if failed is not None and failed not in names:
        print(f"  {failed:<13} FAIL     {reason}")
    if post["passed"] and post["valid"]:
        print(f"self-test PASSED in {elapsed:.2f} s; state {st['state']}")
        return 0
    print(f"self-test FAILED in {elapsed:.2f} s; state {st['state']}")
    if st.get("fault"):
        f = st["fault"]
        print(f"fault {f['code']}: {f['message']} {f['action']}")
    print("No output is possible until a self-test passes (`ack`, then `self-test` again).")
    return 1


def cmd_programs(c: Client, args) -> int:
    progs = c.request("programs")["programs"]
    if args.json:
        print(json.dumps(progs, indent=2))
        return 0
    for i, p in enumerate(progs):
        if i:
            print()
        print(f"{p['id']}  ({p['name']}, {_mmss(p['duration_s'])})  {p['description']}")
        for n, s in enumerate(p["steps"], 1):
            print(
                f"  {n}. {s['zone']:<10} {s['motion']:<6} {_mmss(s['duration_s']):>5}"
                f"  max level {s['max_level']}"
            )
    return 0


def cmd_start(c: Client, args) -> int:
    """Start, keep the lease, show it live; Ctrl-C (or q) stops and waits for the ramp-down."""
    stop_wanted = False

    def on_sigint(_signum, _frame) -> None:
        nonlocal stop_wanted
        stop_wanted = True

    # Ctrl-C only sets a flag: the loop below must keep renewing the lease until the output is off.
    old_handler = signal.signal(signal.SIGINT, on_sigint)
    keys = Keys() if sys.stdin.isatty() and sys.stdout.isatty() else None
    view = LiveView()
    try:
        c.request("subscribe", status=True, events=True)
        level = {} if args.level is None else {"level": args.level}
        r = c.request("start", program=args.program, **level)
        c.last_status = None  # only status lines sent after the start count
        how = "Ctrl-C or q stops" + (", + / - change the level" if keys else "")
        view.message(f"start {args.program}: state {r['state']}; this ctl holds the lease ({how})")
        stop_sent = seen_treating = False
        result = None
        next_renew = 0.0
        ends_at = None  # read a little longer after the end, for the last events
        while ends_at is None or time.monotonic() < ends_at:
            if time.monotonic() >= next_renew:
                next_renew = time.monotonic() + LEASE_RENEW_S
                c.request("lease")
            c.read_message(max(0.0, min(0.05, next_renew - time.monotonic())))
            for ev in drain_events(c):
                view.message(event_line(ev))
                if ev["event"] == "start_refused":
                    result = 1
            st = c.last_status
            view.status(st)
            if keys:
                pressed = keys.read()
                for ch in pressed:
                    cmd = {"+": "level_up", "=": "level_up", "-": "level_down"}.get(ch)
                    if cmd:
                        try:
                            view.message(f"level {c.request(cmd)['level']}")
                        except DaemonError as e:
                            view.message(f"{cmd}: {e.code}: {e.message}")
                stop_wanted = stop_wanted or "q" in pressed.lower()
            state = st["state"] if st else None
            seen_treating = seen_treating or state in TREATING
            if stop_wanted and not stop_sent and state in TREATING and state != "ramp_down":
                stop_sent = True
                view.message("stopping: the output ramps down")
                try:
                    c.request("stop")
                except DaemonError as e:
                    view.message(f"stop: {e.code}: {e.message}")
            if result is None and state in ("finished", "fault", "ready", "idle"):
                # ready/idle without a treatment: the start after the self-test was refused.
                result = 0 if state == "finished" or (seen_treating and state != "fault") else 1
            if result is not None and ends_at is None:
                ends_at = time.monotonic() + 0.2
        view.close()
        return result
    finally:
        if keys:
            keys.close()
        signal.signal(signal.SIGINT, old_handler)


def cmd_simple(c: Client, args) -> int:
    cmd = {"stop": "stop", "estop": "estop", "ack": "acknowledge"}[args.command]
    r = c.request(cmd)
    if cmd == "stop":
        print(f"stop: state {r['state']}; the output ramps down")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            c.read_message(0.1)
            ends = [e for e in drain_events(c) if e["event"] == "state"]
            if any(e["data"]["to"] in ("finished", "fault") for e in ends):
                print(f"output off: state {ends[-1]['data']['to']}")
                break
    elif cmd == "estop":
        print(f"e-stop: output cut at once, fault latched (state {r['state']}).")
        print("Check the device, then `ack`; a self-test runs before any new output.")
    else:
        print(f"acknowledged: state {r['state']}.")
        if r["state"] != "ready":
            print("A self-test runs before the next output (`self-test`, or `start` runs it).")
    return 0


def cmd_level(c: Client, args) -> int:
    if args.command == "level":
        r = c.request("set_level", level=args.level)
    else:
        r = c.request("level_up" if args.command == "up" else "level_down")
    print(f"level {r['level']}")
    return 0


def cmd_history(c: Client, args) -> int:
    recs = c.request("history", limit=args.limit)
    if args.json:
        print(json.dumps(recs, indent=2))
        return 0
    headers = ["ID", "STARTED", "PROGRAM", "ACTIVE", "CHARGE uC", "MEAN uA", "PEAK uA"]
    headers += ["CONTACT %", "END", "FAULT"]
    rows = [
        [
            r["id"],
            _local(r["started_at"]),
            r["program_id"],
            _mmss(r["active_s"]),
            f"{r['charge_uc']:.1f}",
            f"{r['mean_current_ua']:.1f}",
            f"{r['peak_current_ua']:.1f}",
            _num(r["contact_quality_pct"], "", 0),
            r["end_reason"] or "running",
            r["fault_code"] or "",
        ]
        for r in recs
    ]
    print(_table(headers, rows, right={0, 3, 4, 5, 6, 7}))
    if not recs:
        print("(no treatments recorded)")
    return 0


def cmd_treatment(c: Client, args) -> int:
    r = c.request("treatment", id=args.id)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    rows = [
        ("treatment", f"{r['id']}: {r['program_id']} ({r['program_name']})"),
        ("started", _local(r["started_at"])),
        ("ended", f"{_local(r['ended_at'])} ({r['end_reason']})" if r["ended_at"] else "running"),
        ("active", f"{r['active_s']:.1f} s ({_mmss(r['active_s'])})"),
        ("charge", f"{r['charge_uc']:.1f} uC, net DC {r['net_dc_charge_uc']:.2f} uC"),
        ("current", f"mean {r['mean_current_ua']:.1f} uA, peak {r['peak_current_ua']:.1f} uA"),
        ("contact", _num(r["contact_quality_pct"], " %", 0)),
        ("fault", r["fault_code"] or "none"),
        ("updated", _local(r["updated_at"])),
    ]
    print("\n".join(f"{k:<10} {v}" for k, v in rows))
    print()
    zones = [
        [
            z["zone"],
            f"{z['active_s']:.1f}",
            f"{z['charge_uc']:.1f}",
            f"{z['mean_current_ua']:.1f}",
            f"{z['peak_current_ua']:.1f}",
            f"{z['contact_quality_pct']:.0f}",
        ]
        for z in r["zones"]
    ]
    headers = ["ZONE", "ACTIVE s", "CHARGE uC", "MEAN uA", "PEAK uA", "CONTACT %"]
    print(_table(headers, zones, right={1, 2, 3, 4, 5}))
    if not zones:
        print("(no zone figures)")
    return 0


def cmd_totals(c: Client, args) -> int:
    t = c.request("totals")
    if args.json:
        print(json.dumps(t, indent=2))
        return 0
    left = max(0.0, t["daily_max_s"] - t["today_active_s"])
    print(f"treatments  {t['count']}")
    print(f"active      {t['active_s']:.1f} s ({_mmss(t['active_s'])})")
    print(f"charge      {t['charge_uc']:.1f} uC")
    print(
        f"today       {t['today_active_s']:.1f} s of the daily {t['daily_max_s']:.0f} s "
        f"({left:.0f} s left)"
    )
    print(f"streak      {t['streak_days']} day(s)")
    for zone, secs in t["zone_active_s"].items():
        print(f"  {zone:<10} {secs:8.1f} s")
    return 0


def _print_events(events: list[dict]) -> None:
    for e in events:
        tid = f" (treatment {e['treatment_id']})" if e["treatment_id"] else ""
        print(
            f"{e['id']:>6}  {_local(e['ts'])}  {e['kind']:<11} {e['code']:<20} {e['message']}{tid}"
        )
    sys.stdout.flush()


def cmd_events(c: Client, args) -> int:
    if args.since is None:
        events = c.request("events", limit=args.limit)
    else:
        events = c.request("events", since_id=args.since, limit=args.limit)
    if args.json:
        for e in events:
            print(json.dumps(e))
    else:
        print(f"{'ID':>6}  {'TIME':<19}  {'KIND':<11} {'CODE':<20} MESSAGE")
        _print_events(events)
    if not args.follow:
        return 0
    last = events[-1]["id"] if events else (args.since or 0)
    try:
        while True:
            time.sleep(0.5)
            new = c.request("events", since_id=last, limit=1000)
            if new:
                last = new[-1]["id"]
                if args.json:
                    for e in new:
                        print(json.dumps(e), flush=True)
                else:
                    _print_events(new)
    except KeyboardInterrupt:
        return 0


def cmd_export(c: Client, args) -> int:
    text = c.request("export_csv", timeout_s=60.0, what="zones" if args.zones else "treatments")
    text = text["csv"]
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    with open(args.output, "w", newline="", encoding="utf-8") as f:
        f.write(text)
    rows = max(0, text.count("\n") - 1)
    print(f"wrote {rows} row(s) to {args.output}", file=sys.stderr)
    return 0
