"""End to end: a real daemon on the simulated board (``python -m hw --sim``), the kiosk's real
link and view-model; the test plays the UI thread (it runs what the link posts, and the 100 ms
lease tick). Home -> start the demo -> level up -> stop -> the summary shows the dose."""

from __future__ import annotations

import queue
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: daemon_helpers

from daemon_helpers import DaemonFactory  # noqa: E402

from kiosk import strings as S  # noqa: E402
from kiosk.link import Link  # noqa: E402
from kiosk.viewmodel import LEASE_RENEW_S, ViewModel  # noqa: E402

pytestmark = pytest.mark.slow
STEP_BOUND_S = 20.0  # an upper bound for each step to happen, never a speed assertion


class UiLoop:
    """The UI thread: runs posted callbacks and calls the lease tick every 100 ms."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.vm: ViewModel | None = None
        self.next_lease = 0.0

    def post(self, fn):
        self.q.put(fn)

    def run_until(self, pred, what: str, timeout_s: float = STEP_BOUND_S):
        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not reached (state {self.vm.state!r}, "
                    f"screen {self.vm.screen!r}, notice {self.vm.notice!r})"
                )
            now = time.monotonic()
            if now >= self.next_lease:
                self.vm.lease_tick(LEASE_RENEW_S)
                self.next_lease = now + LEASE_RENEW_S
            try:
                self.q.get(timeout=0.01)()
            except queue.Empty:
                pass


@pytest.fixture
def kiosk(tmp_path):
    with DaemonFactory(tmp_path) as f:
        d = f.start()
        ui = UiLoop()
        vm = ViewModel(None, schedule_interval=lambda *_a: None)
        ui.vm = vm
        link = Link(
            str(d.socket),
            "kiosk",
            post=ui.post,
            on_connected=vm.on_link_connected,
            on_disconnected=vm.on_link_disconnected,
            on_message=vm.on_link_message,
        )
        vm.link = link
        link.start()
        try:
            yield d, ui, vm
        finally:
            link.close()


def test_home_start_demo_level_up_stop_summary(kiosk):
    d, ui, vm = kiosk
    ui.run_until(
        lambda: vm.connected and vm.programs and vm.screening_known and vm.state, "connected"
    )
    if vm.screen == "first_use":  # this daemon may or may not have the screening command yet
        vm.submit_screening({k: False for k, _ in S.SCREENING_QUESTIONS})
        ui.run_until(lambda: vm.screen == "home", "screening passed")
    ui.run_until(lambda: vm.screen == "home", "home")
    vm.select_program("demo")
    vm.go("prep")
    assert vm.screen == "prep"
    vm.start_treatment()
    ui.run_until(lambda: vm.state == "running" and vm.measured_ua > 0, "running")
    assert vm.screen == "treatment" and vm.holding_lease
    level_before = vm.level
    vm.level_up()
    ui.run_until(lambda: vm.level == level_before + 1, "level up")
    ui.run_until(lambda: len(vm.trace) >= 20, "trace filling")  # ~1 s at the status rate
    vm.stop()
    ui.run_until(lambda: vm.screen == "summary", "summary")
    s = vm.summary
    assert s["end_reason"] == "stopped" and s["program"] == "demo"
    assert s["charge_uc"] > 0 and s["active_s"] > 0 and s["mean_current_ua"] > 0
    assert not vm.holding_lease
    vm.dismiss_summary()
    ui.run_until(lambda: vm.history and vm.history[0].get("end_reason") == "stopped", "history")
    assert vm.screen == "home"
    assert d.alive
    # The daemon did not trip on the lease while the kiosk drove it from its UI loop.
    assert vm.fault == {}
