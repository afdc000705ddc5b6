"""The kiosk side of ``python -m kiosk.bench``: the real kiosk app in its own process.

    python -m kiosk.bench_kiosk --socket PATH --out RESULT.json [--seconds S] [--program ID]

Run by the bench (kiosk/bench.py) after it started the daemon and recorded a passed screening.
It starts the program, then for ``S`` seconds of treatment in real time, with the treatment
screen rendering the live trace, it records every frame interval (Kivy's clock, once per frame),
taps + or - through the window every ``TAP_EVERY_S`` (the time from the touch to the daemon's
reply to ``level_up``/``level_down``: the daemon queues the new target for the loop, which writes
the DAC toward it at its next tick, before it replies) and loads the history every
``HISTORY_EVERY_S`` (a history load during a treatment). Then it stops the treatment and writes
its figures to RESULT.json. Times are ``time.monotonic()`` (one clock for every process).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

TAP_EVERY_S = 3.0
HISTORY_EVERY_S = 20.0
BOUND_S = 60.0  # an upper bound for the start and the stop to happen at all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kiosk.bench_kiosk")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--program", default="quick-tone")
    args = ap.parse_args(argv)
    from kiosk.display import configure_window, headless_defaults

    headless_defaults()
    configure_window(800, 480)
    from kivy.clock import Clock
    from kivy.core.window import Window

    from kiosk import strings as S
    from kiosk.app import KioskApp
    from kiosk.link import connect_view_model
    from kiosk.shots import find, prepare_touch, tap
    from kiosk.viewmodel import TREATING, ViewModel

    prepare_touch()  # not at the first tap, mid-treatment

    vm = ViewModel(None)
    link = connect_view_model(vm, args.socket)
    app = KioskApp(vm, link=link, socket_path=args.socket)
    out: dict = {"faults": [], "frames_ms": [], "tap_ms": [], "history_loads": 0}
    st = {"phase": "boot", "t": 0.0, "home_drawn": False, "next_tap": 0.0, "next_hist": 0.0}
    taps: list = []  # (t_tap, Reply) of the level taps not answered yet
    raw_request = link.request

    def request(cmd, a=None, **kw):
        r = raw_request(cmd, a, **kw)
        if cmd in ("level_up", "level_down") and st.get("t_tap") is not None:
            taps.append((st.pop("t_tap"), r))
        return r

    link.request = request

    def on_fault(_vm, fault):
        if fault and fault.get("code"):
            out["faults"].append(fault["code"])

    vm.bind(fault=on_fault)

    def on_flip(*_):
        if st["home_drawn"] and "t_home_s" not in out:
            out["t_home_s"] = time.monotonic()  # the first frame of home, on screen

    Window.bind(on_flip=on_flip)

    def end(error: str | None = None):
        if error:
            out["error"] = error
        st["phase"] = "done"
        app.stop()

    def tick(dt):
        now = time.monotonic()
        p = st["phase"]
        if p == "boot":
            if vm.screen == "first_use":
                vm.submit_screening({k: False for k, _ in S.SCREENING_QUESTIONS})
            elif vm.screen == "home" and vm.programs and "t_home_s" not in out:
                st["home_drawn"] = True  # the next flip shows it
                # A still screen is not redrawn (Kivy flips only on a change): ask for the frame,
                # or a home drawn before this tick noticed it waits for the next change (the
                # screen blanking, 120 s later: a cold start of 120 s was measured so).
                Window.canvas.ask_update()
            elif "t_home_s" in out:
                vm.select_program(args.program)
                vm.go("prep")
                vm.start_treatment()
                st.update(phase="starting", t=now)
        elif p == "starting":
            if vm.state == "running":
                st.update(phase="measure", t=now, next_tap=now + TAP_EVERY_S)
                st["next_hist"] = now + HISTORY_EVERY_S
            elif vm.fault or now - st["t"] > BOUND_S:
                end(f"not running: state {vm.state}, {vm.notice} {dict(vm.fault)}")
        elif p == "measure":
            out["frames_ms"].append(dt * 1000.0)
            for t_tap, r in list(taps):
                if r.done_s is not None:
                    taps.remove((t_tap, r))
                    if r.ok:
                        out["tap_ms"].append((r.done_s - t_tap) * 1000.0)
            if now >= st["next_tap"] and vm.state == "running":
                up = vm.level < vm.level_max
                b = find(app.root, "+" if up else "−")
                if b is not None:
                    st["t_tap"] = time.monotonic()
                    tap(b)  # touch down and up through the window: on_press sends the intent
                st["next_tap"] = now + TAP_EVERY_S
            if now >= st["next_hist"]:
                vm.refresh_home()
                out["history_loads"] += 1
                st["next_hist"] = now + HISTORY_EVERY_S
            if now - st["t"] >= args.seconds:
                out["treatment_s"] = now - st["t"]
                vm.stop()
                st.update(phase="stopping", t=now)
            elif vm.state not in TREATING:
                out["treatment_s"] = now - st["t"]
                end(f"the treatment ended early: state {vm.state}, fault {dict(vm.fault)}")
        elif p == "stopping":
            if vm.state == "finished" or now - st["t"] > BOUND_S:
                end(None if vm.state == "finished" else f"not finished: {vm.state}")
        return True

    Clock.schedule_interval(tick, 0)
    app.run()
    out["kiosk_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["lease_ms"] = vm.lease_ms
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
