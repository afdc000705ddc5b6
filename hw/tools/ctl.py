"""Service command line for the hw daemon: ``python -m hw.ctl [--socket PATH] COMMAND``.

For a service engineer at an SSH prompt. It talks to the daemon over its socket (see
docs/protocol.md) with :class:`hw.service.client.Client`, like the kiosk does; it never touches the
hardware itself. ``python -m hw.ctl --help`` lists the commands; ``COMMAND --help`` explains one.

Exit status: 0 done, 1 the daemon refused or something failed (``error: CODE: message`` on
stderr), 2 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from hw.service.client import DaemonError
from hw.tools.ctl_client import CannotConnect, DaemonGone, connect
from hw.tools.ctl_commands import (
    cmd_events,
    cmd_export,
    cmd_history,
    cmd_level,
    cmd_programs,
    cmd_self_test,
    cmd_simple,
    cmd_start,
    cmd_status,
    cmd_totals,
    cmd_treatment,
)

DEFAULT_SOCKET = "/run/microcurrent/hw.sock"

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
