"""Drives the real kiosk app (offscreen window, sim panel beside it) against a real daemon.

    python tests/kiosk/kiosk_driver.py SOCKET OUTDIR SCENARIO

A scenario is a generator run from Kivy's clock, one step per frame: it taps real buttons
through the window (``kiosk.shots.tap``), waits for conditions without ever blocking the UI
thread (except the one deliberate 2 s block), takes screenshots and notes what the visible
labels said. Everything the kiosk observed (screen, state, output, fault code, lost/connected)
and every command it sent is appended to one ordered timeline; the test judges by that order
and by the outcome, never by the wall clock. The timeouts here are only upper bounds for a step
to happen at all.

Stdout carries one line per milestone for the test that orchestrates the processes:
``MARK name`` (e.g. "the treatment runs: kill the daemon now"), ``HOST_TIMING code detail`` (a
fault of timing the scenario did not cause: a LOOP_STALL, or a LEASE_EXPIRED after this UI thread
was held past the lease; the test fails naming it, and runs nothing again), ``FAILED why`` and
``DONE``. OUTDIR/SCENARIO.json is rewritten at every mark (a kill -9 may end the process).
"""

from __future__ import annotations

import collections
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("KIVY_NO_ARGS", "1")
os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
os.environ.setdefault("KIVY_NO_FILELOG", "1")
# Mesa's software rasterizer (no GPU here) on one thread: on 2 busy cores its worker threads only
# add hand-offs (measured: ~16 instead of ~23 ms of CPU per treatment frame). No effect on a GPU.
os.environ.setdefault("LP_NUM_THREADS", "1")

HOST_TIMING_FAULTS = ("LOOP_STALL",)  # as tests/daemon_helpers.py
STEP_BOUND_S = 30.0  # an upper bound for any one step to happen, never a speed assertion
WINDOW = (1100, 480)  # the 800x480 kiosk and the 300 px sim panel
KIOSK_W = 800
QUIET_CMDS = ("lease", "status")  # not logged one by one (counted)
LEASE_RENEW_S = 0.1  # kiosk.viewmodel.LEASE_RENEW_S
SLOW_FRAME_MS = 100.0  # frame intervals this long are noted in the timeline (where, not a check)


class Step:
    """One wait of a scenario: ``done()`` is checked every frame; ``what`` names it in a failure."""

    def __init__(self, done, what: str, timeout_s: float = STEP_BOUND_S):
        self.done, self.what = done, what
        self.deadline = time.monotonic() + timeout_s


class Driver:
    def __init__(self, sock: str, outdir: str, scenario: str):
        self.sock, self.outdir, self.name = sock, Path(outdir), scenario
        self.timeline: list[list] = []
        self.shots: dict[str, dict] = {}
        self.leases = 0
        self.result = "running"
        self.pixels: dict[str, tuple] = {}  # shot name -> (RGB rows bottom-up, w, h)
        self.expected: set[str] = set()  # fault codes the scenario causes itself, just now
        self.frames_seen: collections.deque = collections.deque(maxlen=200)  # (t, interval s)

    # ------------------------------------------------------------------ record
    def note(self, kind: str, value) -> None:
        self.timeline.append([kind, value])

    def save(self) -> None:
        report = {
            "scenario": self.name,
            "result": self.result,
            "timeline": self.timeline,
            "shots": self.shots,
            "leases_sent": self.leases,
            "summary": dict(self.vm.summary),
            "history": list(self.vm.history[:3]),
        }
        tmp = self.outdir / f"{self.name}.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, self.outdir / f"{self.name}.json")

    def say(self, line: str) -> None:
        print(line, flush=True)

    def mark(self, name: str) -> None:
        self.note("mark", name)
        self.save()
        self.say(f"MARK {name}")

    # ------------------------------------------------------------------ steps
    def until(self, pred, what: str, timeout_s: float = STEP_BOUND_S) -> Step:
        return Step(pred, what, timeout_s)

    def frames(self, n: int) -> Step:
        left = [n]

        def done():
            left[0] -= 1
            return left[0] < 0

        return Step(done, f"{n} frames")

    def seconds(self, s: float) -> Step:
        end = time.monotonic() + s
        return Step(lambda: time.monotonic() >= end, f"{s} s", s + STEP_BOUND_S)

    def button(self, pred, fault: str = ""):
        """The visible, enabled button whose text satisfies ``pred`` (or the sim panel's
        button for ``fault``)."""
        from kivy.uix.button import Button

        for w in self.app.root.walk(restrict=True):
            if (
                isinstance(w, Button)
                and (getattr(w, "fault", "") == fault if fault else pred(w.text))
                and not w.disabled
                and visible(w, self.app.root)
                and w.width > 1
            ):
                return w
        return None

    def tap(self, text_or_pred, hold_s: float = 0.0, what: str | None = None, fault: str = ""):
        """Wait until the button is on screen (and laid out), then touch it through the window."""
        from kiosk.shots import tap

        pred = text_or_pred if callable(text_or_pred) else (lambda t, s=text_or_pred: t == s)
        label = what or (text_or_pred if isinstance(text_or_pred, str) else "button")
        yield self.until(lambda: self.button(pred, fault) is not None, f"button {label!r} shown")
        yield self.frames(2)  # a screen that just changed lays out over a frame or two
        b = self.button(pred, fault)
        if b is None:
            raise AssertionError(f"button {label!r} went away")
        self.note("tap", label + (f" (held {hold_s} s)" if hold_s else ""))
        tap(b, hold_s=hold_s)
        if hold_s:
            yield self.seconds(hold_s + 0.2)

    def sim(self, fault: str, on: bool):
        """Tap a fault in the sim panel (inject or clear), and wait for the daemon's answer."""
        if (fault in (self.vm.sim_state.get("faults") or [])) == on:
            return
        yield from self.tap(None, what=f"sim {fault}", fault=fault)
        yield self.until(
            lambda: (fault in (self.vm.sim_state.get("faults") or [])) == on,
            f"sim {fault} {'active' if on else 'cleared'}",
        )

    def shot(self, name: str, png: bool = True):
        """Every visible text on the kiosk side after the layout settled and, with ``png``, a
        screenshot of the kiosk (the 800 px the person sees, not the sim panel); the PNGs are
        encoded when the scenario ends. No PNG while the output is on: on Mesa's software
        rasterizer a readback held this process for 0.7-3 s under load, which the lease (rightly)
        does not survive; those screens are rendered by ``kiosk.shots`` instead."""
        from kivy.core.window import Window

        yield self.frames(3)
        if png:
            h = Window.size[1]
            self.pixels[name] = (read_rgba(KIOSK_W, h), KIOSK_W, h)
        self.shots[name] = {
            "screen": self.vm.screen,
            "state": self.vm.state,
            "output": self.vm.output,
            "texts": visible_texts(self.app.root, KIOSK_W),
        }
        self.note("shot", name)

    def write_pngs(self) -> None:
        for name, (rgb, w, h) in self.pixels.items():
            write_png(self.outdir / f"{name}.png", rgb, w, h)
        self.pixels.clear()

    # ------------------------------------------------------------------ common paths
    def start_demo(self):
        """Home -> the demo -> I'm ready -> until the output runs."""
        from kiosk import strings as S

        vm = self.vm
        yield self.until(
            lambda: vm.screen == "home" and vm.state in ("ready", "finished"), "home, ready"
        )
        yield from self.tap(lambda t: t.startswith("[b]Demo[/b]"), what="program Demo")
        yield self.until(lambda: vm.selected_program == "demo", "demo selected")
        yield from self.tap(S.START)
        yield self.until(lambda: vm.screen == "prep", "preparation")
        yield from self.tap(S.READY)
        yield self.until(lambda: vm.state == "running" and vm.measured_ua > 0, "running")

    def acknowledge(self):
        from kiosk import strings as S

        yield from self.tap(S.FAULT_HOLD, hold_s=2.0)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        if os.environ.get("KIOSK_DRIVER_NICE"):
            try:
                os.nice(int(os.environ["KIOSK_DRIVER_NICE"]))
            except (OSError, ValueError):
                pass
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
        from kiosk.display import configure_window

        configure_window(*WINDOW)
        from kivy.clock import Clock

        from kiosk.app import KioskApp
        from kiosk.link import connect_view_model
        from kiosk.shots import prepare_touch
        from kiosk.viewmodel import ViewModel

        prepare_touch()  # a slow first import, not at the first tap mid-treatment
        vm = self.vm = ViewModel(None)
        link = connect_view_model(vm, self.sock, backoff_s=(0.1, 0.2, 0.5))
        raw_request = link.request

        def request(cmd, args=None, **kw):
            if cmd == "lease":
                self.leases += 1
            elif cmd not in QUIET_CMDS:
                extra = ""
                if cmd == "sim" and args and args.get("action") in ("inject", "clear"):
                    extra = f" {args['action']} {args['fault']}"
                self.note("sent", cmd + extra)
            return raw_request(cmd, args, **kw)

        link.request = request
        vm.link = link
        self.app = KioskApp(vm, link=link, socket_path=self.sock, sim_panel=True)
        for prop in ("screen", "state", "output", "service_lost", "connected", "ack_message"):
            vm.bind(**{prop: lambda _vm, v, p=prop: self.note(p, v)})
        vm.bind(level=lambda _vm, v: self.note("level_seen", v))
        vm.bind(fault=self._on_fault)
        gen = SCENARIOS[self.name](self)
        cur: list[Step | None] = [None]
        # One readback before anything runs: the first is the slow one (see read_rgba).
        Clock.schedule_once(lambda _dt: read_rgba(KIOSK_W, WINDOW[1]), 0)

        cpu = [time.thread_time(), time.process_time()]

        def frame(dt):
            self.frames_seen.append((time.monotonic(), dt))
            ui_ms = (time.thread_time() - cpu[0]) * 1000.0
            all_ms = (time.process_time() - cpu[1]) * 1000.0
            cpu[:] = [time.thread_time(), time.process_time()]
            if dt * 1000.0 >= SLOW_FRAME_MS:
                # Where the UI thread was held: the frame interval, the CPU time this thread
                # ran in it, and the whole process's (with Mesa's rasterizer threads); the
                # rest it waited for a CPU. Diagnostics for the lease; no test asserts them.
                self.note(
                    "slow_frame", [round(dt * 1000.0), round(ui_ms), round(all_ms), vm.screen]
                )
            try:
                while True:
                    step = cur[0]
                    if step is not None:
                        if not step.done():
                            if time.monotonic() > step.deadline:
                                raise AssertionError(f"not reached: {step.what}")
                            return True
                    cur[0] = next(gen)
            except StopIteration:
                self.result = "done"
                self.finish("DONE")
                return False
            except AssertionError as e:
                self.result = f"failed: {e} (state {vm.state!r}, screen {vm.screen!r})"
                self.finish(f"FAILED {self.result}")
                return False

        Clock.schedule_interval(frame, 0)
        self.app.run()
        return 0 if self.result == "done" else 1

    def expect(self, *codes: str) -> None:
        """The faults the next steps cause on purpose (any other fault ends the scenario)."""
        self.expected = set(codes)

    def worst_recent_frame_ms(self, window_s: float = 1.0) -> float:
        now = time.monotonic()
        return max((dt * 1000.0 for t, dt in self.frames_seen if now - t <= window_s), default=0)

    def _on_fault(self, _vm, fault) -> None:
        code = (fault or {}).get("code")
        self.note("fault", code)
        if code is None or code in self.expected or self.result != "running":
            return
        if code in HOST_TIMING_FAULTS:
            self.result = f"host timing: {code}"
            self.finish(f"HOST_TIMING {code} {fault.get('detail', '')}")
            return
        gap_ms = self.worst_recent_frame_ms()
        if code == "LEASE_EXPIRED" and gap_ms >= self.vm.lease_ms - 1000.0 * LEASE_RENEW_S:
            # The lease did its job: this UI thread was held long enough (a renewal is sent in
            # the first frame after each 100 ms) that no renewal reached the daemon in time.
            # On a loaded host that is host timing, named with its evidence (the test fails
            # with it). Without such a gap it is a failure of the kiosk or the daemon.
            self.result = f"host timing: {code} after a {gap_ms:.0f} ms frame"
            self.finish(f"HOST_TIMING {code} the UI thread was held {gap_ms:.0f} ms")
            return
        self.result = f"failed: unexpected fault {code} (worst frame {gap_ms:.0f} ms)"
        self.finish(f"FAILED {self.result}")

    def finish(self, line: str) -> None:
        self.write_pngs()
        self.save()
        self.say(line)
        self.app.stop()


def read_rgba(w: int, h: int) -> bytes:
    """The window's pixels, RGBA (the framebuffer's own format: Mesa's software rasterizer took
    ~120 ms of CPU to convert to RGB on a first read), bottom row first."""
    from kivy.graphics.opengl import GL_RGBA, GL_UNSIGNED_BYTE, glReadPixels

    return glReadPixels(0, 0, w, h, GL_RGBA, GL_UNSIGNED_BYTE)


def write_png(path: Path, rgba: bytes, w: int, h: int) -> None:
    """An RGBA PNG from OpenGL's bottom-up rows."""
    stride = w * 4
    raw = b"".join(
        b"\x00" + rgba[(h - 1 - y) * stride : (h - y) * stride] for y in range(h)
    )  # filter 0 per row, top row first

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)


def visible(w, root) -> bool:
    p = w
    while p is not None and p is not root:
        if getattr(p, "opacity", 1) == 0 or getattr(p, "width", 2) <= 1:
            return False
        if p.parent is p:
            break
        p = p.parent
    return True


def visible_texts(root, max_x: float) -> list[str]:
    """The text of every visible label left of ``max_x`` (the kiosk, not the sim panel)."""
    from kivy.uix.label import Label

    from kiosk.widgets import Digits

    out = []
    for w in root.walk(restrict=True):
        if isinstance(w, Label | Digits) and w.text and visible(w, root):
            x, _y = w.to_window(w.x, w.y)
            if x < max_x:
                out.append(w.text)
    return out


# ---------------------------------------------------------------------------- scenarios
def first_use_to_home(d: Driver):
    from kiosk import strings as S

    vm = d.vm
    yield d.until(
        lambda: vm.connected and vm.programs and vm.screening_known and vm.state, "connected"
    )
    yield d.until(lambda: vm.screen in ("first_use", "home"), "first use or home")
    if vm.screen == "first_use":
        yield from d.shot("first_use_live")
        for _ in S.SCREENING_QUESTIONS:
            yield from d.tap(S.NO)
        yield d.until(lambda: vm.screen == "home", "home after the screening")
    yield from d.shot("home_live")


def scenario_faults(d: Driver):
    """An e-stop from the sim panel; the UI thread blocked 2 s; the daemon killed (the test
    kills and restarts it); then the kiosk itself is killed mid-treatment (by the test)."""
    from kivy.clock import Clock

    from kiosk import strings as S

    vm = d.vm
    yield from first_use_to_home(d)
    # 1. A fault from the daemon (the sim panel's e-stop): the fault screen, a hold that is
    # refused while the cause is there, the cause removed, a hold that acknowledges.
    yield from d.start_demo()
    yield from d.shot("running_live", png=False)
    d.mark("estop")
    d.expect("ESTOP")
    yield from d.sim("estop", True)
    yield d.until(lambda: vm.screen == "fault", "fault screen (ESTOP)")
    yield from d.shot("fault_estop")
    yield from d.acknowledge()
    yield d.until(lambda: vm.ack_message, "acknowledge refused while pressed")
    yield from d.shot("fault_estop_refused")
    yield from d.sim("estop", False)
    yield from d.acknowledge()
    yield d.until(lambda: vm.screen == "home" and vm.state == "ready", "home after ESTOP")
    d.expect()
    # 2. The UI thread blocked for 2 s (a clock callback that sleeps): no lease renewals.
    yield from d.start_demo()
    d.mark("block")
    d.expect("LEASE_EXPIRED")

    def block(_dt):
        time.sleep(2.0)  # the UI thread does nothing else: no frame, no lease renewal
        d.note("unblocked", True)

    Clock.schedule_once(block, 0)
    yield d.until(lambda: ["unblocked", True] in d.timeline, "the block ran")
    yield d.until(lambda: vm.screen == "fault", "fault screen after the block")
    yield from d.shot("fault_ui_blocked")
    yield from d.acknowledge()
    yield d.until(lambda: vm.screen == "home" and vm.state == "ready", "home after the block")
    d.expect()
    # 3. The daemon killed mid-treatment: service lost, then the restarted daemon's latched fault.
    yield from d.start_demo()
    d.mark("kill_daemon")
    d.expect("UNACKNOWLEDGED")  # the restarted daemon latches the interrupted treatment
    yield d.until(lambda: vm.service_lost, "service lost")
    yield from d.shot("service_lost_live")
    d.mark("restart_daemon")
    yield d.until(lambda: vm.connected and vm.screen == "fault", "fault after the restart")
    yield from d.shot("fault_after_daemon_restart")
    yield from d.acknowledge()
    yield d.until(lambda: vm.screen == "home" and vm.state == "ready", "home after restart")
    d.expect()
    # 4. The kiosk itself killed mid-treatment (by the test, on this mark).
    d.write_pngs()  # now, with no output on: this process will not get to the end
    yield from d.start_demo()
    d.mark("kill_kiosk")
    yield d.until(lambda: False, "killed by the test", timeout_s=60.0)
    assert S  # (strings used above)


def scenario_restart(d: Driver):
    """A kiosk started after the last one was killed mid-treatment: the latched fault, never a
    resume; then the issue's tap-through with lift-offs from the sim panel."""
    from kiosk import strings as S

    vm = d.vm
    d.expect("LEASE_EXPIRED")  # the last kiosk was killed mid-treatment
    yield d.until(lambda: vm.connected and vm.state and vm.screening_known, "connected")
    yield d.until(lambda: vm.screen == "fault", "the latched fault")
    yield from d.shot("fault_after_kiosk_restart")
    yield d.seconds(1.0)  # the fault stays, the output stays off: nothing resumes by itself
    d.mark("fault_shown")
    yield from d.acknowledge()
    yield d.until(lambda: vm.screen == "home" and vm.state == "ready", "home after ack")
    d.expect()
    # The end-to-end treatment: the demo, two level-ups, a short lift (the contact prompt, the
    # re-contact ramp), a long lift (paused; resume by a tap), to the end, summary, history.
    yield from d.start_demo()
    level0 = vm.level
    for n in (1, 2):
        yield from d.tap("+")
        yield d.until(lambda n=n: vm.level == level0 + n, f"level {level0 + n}")
    yield d.until(lambda: vm.state == "running", "running at the new level")
    d.mark("lift")
    yield from d.sim("lift_off", True)
    # The banner follows the daemon's contact_lost event; the output's state comes with the next
    # status (20 Hz), which may land after the shot's three frames (a fresh-clone run failed so:
    # output "on" in a shot with "contact lost" on screen): wait for both.
    yield d.until(lambda: vm.lifted and vm.output == "lifted", "contact lost")
    yield from d.shot("lift_off_live", png=False)
    yield from d.sim("lift_off", False)
    yield d.until(lambda: vm.recontact, "contact restored")
    yield from d.shot("recontact_live", png=False)
    yield d.until(lambda: vm.state == "running" and vm.output == "on", "running again")
    d.mark("long_lift")
    yield from d.sim("lift_off", True)
    yield d.until(lambda: vm.state == "paused", "paused after a long lift")
    yield from d.shot("paused_live")
    yield from d.sim("lift_off", False)
    yield from d.tap(S.RESUME)
    yield d.until(lambda: vm.state == "running", "running after resume")
    yield d.until(lambda: vm.screen == "summary", "summary at the end", timeout_s=60.0)
    yield from d.shot("summary_live")
    yield from d.tap(S.DONE)
    yield d.until(lambda: vm.screen == "home", "home after the summary")
    yield from d.tap(S.HISTORY)
    yield d.until(
        lambda: vm.screen == "history" and vm.history and vm.history[0].get("end_reason"),
        "history with the record",
    )
    yield from d.shot("history_live")


SCENARIOS = {"faults": scenario_faults, "restart": scenario_restart}


if __name__ == "__main__":
    sock, outdir, scenario = sys.argv[1:4]
    sys.exit(Driver(sock, outdir, scenario).run())
