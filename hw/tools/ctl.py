"""Service command line for the hw daemon: ``python -m hw.ctl [--socket PATH] COMMAND``.

For a service engineer at an SSH prompt. It talks to the daemon over its socket (see
docs/protocol.md) with :class:`hw.service.client.Client`, like the kiosk does; it never touches the
hardware itself. ``python -m hw.ctl --help`` lists the commands; ``COMMAND --help`` explains one.

Exit status: 0 done, 1 the daemon refused or something failed (``error: CODE: message`` on
stderr), 2 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import select
import shutil
import signal
import sys
import textwrap
import time
from typing import Any

from hw.service.client import Client, DaemonError

DEFAULT_SOCKET = "/run/microcurrent/hw.sock"
LEASE_RENEW_S = 0.1  # the daemon's lease is 300 ms: renew three times within it
TTY_REFRESH_S = 0.1  # a live line on a terminal
PLAIN_REFRESH_S = 0.5  # a live line per half second into a pipe or a file
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

LEASE_HELD_HELP = (
    "A running treatment belongs to the client that started it: it holds the treatment lease and "
    "must renew it every 100 ms. Only that client may change the level, pause, resume or start; "
    "anyone may stop or estop. From a separate shell, level/up/down are therefore refused while "
    "the kiosk (or another `ctl start`) runs a treatment. Use the kiosk's controls, or run the "
    "treatment with `ctl start` and press + or - there."
)
HINTS = {
    "LEASE_HELD": LEASE_HELD_HELP,
    ("level", "REFUSED"): "level/up/down change a running treatment; none is running here.",
    ("self-test", "REFUSED"): "A fault must be acknowledged (`ack`) and no treatment may run.",
    ("treatment", "INTERNAL"): "The daemon reports an unknown id this way; see `history`.",
}


class CannotConnect(Exception):
    pass


class DaemonGone(Exception):
    """The daemon closed the connection (kept apart from a closed stdout)."""


class CtlClient(Client):
    """hw.service.client.Client, with a lost daemon kept apart from a closed stdout (both would be a
    ConnectionError: BrokenPipeError is one)."""

    def read_message(self, timeout_s: float | None = None) -> dict | None:
        try:
            return super().read_message(timeout_s)
        except ConnectionError as e:
            raise DaemonGone(str(e)) from None

    def request(self, cmd: str, timeout_s: float = 5.0, **args: Any) -> Any:
        try:
            return super().request(cmd, timeout_s, **args)
        except ConnectionError as e:
            raise DaemonGone(str(e)) from None


# ------------------------------------------------------------------------------ formatting
def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _mmss(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def _local(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return _dt.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M:%S")


def _ohm(value: float | None) -> str:
    return "- kOhm" if value is None else f"{value / 1000:.1f} kOhm"


def _table(headers: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        out = [
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def status_line(s: dict) -> str:
    """One line for a live display, the most useful figures first."""
    parts = [f"{s['state']} ({s['output']})"]
    if s.get("level") is not None:
        parts.append(f"level {s['level']}/{s['level_max']}")
    parts.append(f"set {s['setpoint_ua']:5.1f} meas {s['measured_ua']:5.1f} uA")
    parts.append(_ohm(s["impedance_ohm"]))
    parts.append(f"contact {s['contact_quality_pct']:3.0f} %" if s["contact"] else "NO CONTACT")
    if s.get("program"):
        parts.append(f"{s['program']} {s['step'] + 1}/{s['steps']} {s['zone']}")
        parts.append(f"{_mmss(s['step_left_s'])}/{_mmss(s['total_left_s'])} left")
    if s.get("fault"):
        parts.append(f"FAULT {s['fault']['code']}")
    if s.get("lease_holder"):
        parts.append(f"lease {s['lease_holder']}")
    return " | ".join(parts)


def summary_line(d: dict) -> str:
    return (
        f"treatment {d.get('treatment_id')} ({d.get('program')}) ended: {d.get('end_reason')}; "
        f"active {_num(d.get('active_s'), ' s')}, charge {_num(d.get('charge_uc'), ' uC')}, "
        f"mean {_num(d.get('mean_current_ua'), ' uA')}, "
        f"peak {_num(d.get('peak_current_ua'), ' uA')}, "
        f"contact {_num(d.get('contact_quality_pct'), ' %', 0)}"
    )


def event_line(msg: dict) -> str:
    name, d = msg["event"], msg.get("data", {})
    if name == "state":
        return f"state {d['from']} -> {d['to']}"
    if name == "cue":
        return f"cue {d['kind']}: step {d['step'] + 1} {d['zone']}: {d['text']}"
    if name == "fault":
        return f"FAULT {d['code']}: {d['message']} [{d['detail']}] {d['action']}"
    if name == "contact_lost":
        return f"contact lost ({d.get('reason', '?')}): output paused, timers stopped"
    if name == "contact_restored":
        return f"contact restored after {_num(d.get('lifted_s'), ' s')}"
    if name == "treatment_started":
        return f"treatment {d['treatment_id']} started: {d['program']}"
    if name == "treatment_finished":
        return summary_line(d)
    if name == "start_refused":
        return f"start refused: {d['reason']}"
    if name == "limit":
        return f"limit: {d['reason']}"
    return f"{name} {json.dumps(d)}"


def status_text(s: dict) -> str:
    """A full snapshot, one field per line."""
    rows = [("state", f"{s['state']} (output {s['output']})")]
    if s.get("program"):
        rows += [
            ("program", f"{s['program']} ({s['program_name']})"),
            ("step", f"{s['step'] + 1} of {s['steps']}: {s['zone']}, {s['motion']}"),
            ("", s["text"]),
            ("time left", f"{_mmss(s['step_left_s'])} in this step, {_mmss(s['total_left_s'])}"),
            ("level", f"{s['level']} (at most {s['level_max']} in this step)"),
        ]
    rows += [
        ("current", f"setpoint {s['setpoint_ua']:.1f} uA, measured {s['measured_ua']:.1f} uA"),
        ("impedance", _ohm(s["impedance_ohm"])),
        (
            "contact",
            f"{'yes' if s['contact'] else 'no'} (quality {s['contact_quality_pct']:.0f} %)",
        ),
    ]
    if s.get("program"):
        rows.append(
            ("charge", f"{s['charge_uc']:.1f} uC delivered, net DC {s['net_dc_charge_uc']:.2f} uC")
        )
    post = s["post"]
    if post["passed"] is None:
        test = "not run since start-up" if not post["valid"] else "valid"
    elif post["passed"]:
        test = "passed" + ("" if post["valid"] else " (no longer valid: a fault since)")
    else:
        test = f"FAILED at {post['failed_step']}"
    rows.append(("self-test", test))
    f = s.get("fault")
    rows.append(("fault", f"{f['code']}: {f['message']}" if f else "none"))
    if f:
        rows += [("", f"detail: {f['detail']}"), ("", f"to do: {f['action']}")]
    rows.append(("lease", f"held by {s['lease_holder']}" if s.get("lease_holder") else "nobody"))
    if s.get("last_summary"):
        rows.append(("last", summary_line(s["last_summary"])))
    return "\n".join(f"{k:<10} {v}".rstrip() for k, v in rows)


class LiveView:
    """A live status line (rewritten in place on a terminal, one line per 0.5 s otherwise) with
    event lines printed above it."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.period = TTY_REFRESH_S if self.tty else PLAIN_REFRESH_S
        self.next_draw = 0.0
        self.drawn = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _stamp(self) -> str:
        return time.strftime("%H:%M:%S ")

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self._write("\r\033[K")
            self.drawn = False

    def message(self, text: str) -> None:
        self._clear()
        self._write(self._stamp() + text + "\n")
        if self.tty:
            self.next_draw = 0.0  # the line was cleared: draw it again at once

    def status(self, s: dict | None) -> None:
        now = time.monotonic()
        if s is None or now < self.next_draw:
            return
        self.next_draw = now + self.period
        line = status_line(s)
        if self.tty:
            width = shutil.get_terminal_size().columns
            self._write("\r\033[K" + line[: max(20, width - 1)])
            self.drawn = True
        else:
            self._write(self._stamp() + line + "\n")

    def close(self) -> None:
        if self.tty and self.drawn:
            self._write("\n")
            self.drawn = False


class Keys:
    """Single key presses from a terminal (cbreak mode: Ctrl-C still interrupts)."""

    def __init__(self):
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self._termios = termios
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def read(self) -> str:
        ready, _, _ = select.select([self.fd], [], [], 0)
        return os.read(self.fd, 32).decode(errors="ignore") if ready else ""

    def close(self) -> None:
        self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, self.saved)


# ------------------------------------------------------------------------------ commands
def connect(path: str, *, status: bool = False) -> Client:
    try:
        return CtlClient(path, f"ctl-{os.getpid()}", status=status)
    except PermissionError as e:
        raise CannotConnect(
            f"cannot connect to the hw daemon at {path}: {e.strerror}. The socket is for the "
            "daemon's group (mck): run as a member of it, or with sudo."
        ) from None
    except (OSError, DaemonGone) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise CannotConnect(
            f"cannot connect to the hw daemon at {path}: {why}. Is it running? "
            "Try: systemctl status microcurrent-hw (another socket: --socket PATH or $MCK_SOCKET)"
        ) from None


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


# ------------------------------------------------------------------------------ arguments
START_HELP = """\
Start PROGRAM and stay with it. This ctl holds the treatment lease and renews it every 100 ms
while it shows the live status, until the program ends (exit 0) or a fault ends it (exit 1).
Ctrl-C (or q) sends stop and waits until the output has ramped down and is off. On a terminal,
+ and - change the level (only the lease holder may).

The output is cut if this ctl dies, by design: the lease lives in this process. If it is killed,
suspended (Ctrl-Z), its output blocks (Ctrl-S, a paused pager), or the SSH connection drops, the
lease is not renewed and the daemon cuts the output within 300 ms with a LEASE_EXPIRED fault
(then `ack`). A treatment never runs without a live controller."""

LEVEL_HELP = "Change the level of the running treatment (level N, up, down).\n\n" + textwrap.fill(
    LEASE_HELD_HELP, 96
)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(
        prog="python -m hw.ctl",
        description="Service command line for the microcurrent-kiosk hw daemon.",
        epilog="Exit status: 0 done, 1 refused or failed (error: CODE: message), "
        "2 cannot reach the daemon.",
    )
    ap.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the daemon's socket (default: $MCK_SOCKET, else {DEFAULT_SOCKET})",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn, help_: str, description: str | None = None, json_flag: bool = False):
        p = sub.add_parser(name, help=help_, description=description or help_, formatter_class=raw)
        p.set_defaults(fn=fn)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print the daemon's JSON")
        return p

    p = add("status", cmd_status, "the device's state (one snapshot)", json_flag=True)
    p.add_argument(
        "--live",
        action="store_true",
        help="follow the status stream until Ctrl-C (a line every 0.5 s when not on a terminal)",
    )
    add(
        "self-test",
        cmd_self_test,
        "run the self-test and show each step (exit 1 if it fails)",
        "Run the power-on self-test (POST) now and wait for its result. It needs the device idle "
        "(no treatment, no latched fault: `ack` first).",
    )
    add("programs", cmd_programs, "the treatment programs", json_flag=True)
    p = add("start", cmd_start, "start a program and keep its lease (see start --help)", START_HELP)
    p.add_argument("program", metavar="PROGRAM", help="a program id (see `programs`)")
    p.add_argument("--level", type=int, metavar="N", help="the level to ramp to (default 1)")
    add("stop", cmd_simple, "stop the treatment (ramp down); anyone may")
    add("estop", cmd_simple, "cut the output at once and latch an ESTOP fault; anyone may")
    add("ack", cmd_simple, "acknowledge a latched fault once its cause is gone")
    p = add("level", cmd_level, "set the level (lease holder only)", LEVEL_HELP)
    p.add_argument("level", type=int, metavar="N", help="1 up to the current step's maximum")
    add("up", cmd_level, "one level up (lease holder only)", LEVEL_HELP)
    add("down", cmd_level, "one level down (lease holder only)", LEVEL_HELP)
    p = add("history", cmd_history, "recent treatments, newest first", json_flag=True)
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (1-500)")
    p = add("treatment", cmd_treatment, "one treatment with its zones", json_flag=True)
    p.add_argument("id", type=int, metavar="ID")
    add("totals", cmd_totals, "all-time totals, today's time and the streak", json_flag=True)
    p = add(
        "events",
        cmd_events,
        "the recorded events (faults, self-tests, acknowledgements)",
        "The event log kept in the history database: faults, self-test results and "
        "acknowledgements. Live events (cues, contact) are shown by `status --live`.",
        json_flag=True,
    )
    p.add_argument("--since", type=int, metavar="ID", help="only events after this id")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (1-1000)")
    p.add_argument("--follow", action="store_true", help="keep printing new events until Ctrl-C")
    p = add("export", cmd_export, "the treatments (or zones) as CSV")
    p.add_argument("--zones", action="store_true", help="one row per treatment and zone")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    return ap


def _error(code: str, message: str, hint: str | None = None) -> None:
    print(f"error: {code}: {message}", file=sys.stderr)
    if hint:
        print(textwrap.fill(hint, 79), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.socket or os.environ.get("MCK_SOCKET") or DEFAULT_SOCKET
    family = "level" if args.command in ("level", "up", "down") else args.command
    try:
        c = connect(path, status=False)
    except CannotConnect as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DaemonError as e:
        _error(e.code, e.message)
        return 1
    try:
        with c:
            return args.fn(c, args)
    except DaemonError as e:
        _error(e.code, e.message, HINTS.get((family, e.code)) or HINTS.get(e.code))
        return 1
    except TimeoutError as e:
        _error("TIMEOUT", str(e) or "the daemon did not answer in time")
        return 1
    except DaemonGone as e:
        print(f"error: lost the connection to the hw daemon at {path}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout closed (e.g. piped into head): nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
