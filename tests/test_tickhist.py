"""The runner's timing histograms: bins, windows by subtraction, and what the loop publishes."""

import time

from hw.control import tickhist as th


def test_every_duration_falls_in_the_bin_whose_edges_hold_it():
    prev = 0
    for us in range(0, 270_000, 7):
        i = th.bin_of(us)
        assert i >= prev  # bins are ordered
        prev = i
        if i < th.BINS - 1:
            assert th.lower_us(i) <= us < th.upper_us(i), us
    assert th.bin_of(-5) == 0
    assert th.bin_of(10**9) == th.BINS - 1  # everything longer lands in the last bin


def test_a_bin_is_at_most_an_eighth_of_its_lower_edge_wide():
    for i in range(16, th.BINS - 1):
        assert (th.upper_us(i) - th.lower_us(i)) * 8 <= th.lower_us(i), i
    for i in range(16):
        assert th.upper_us(i) - th.lower_us(i) == 1


def test_a_window_is_the_difference_of_two_readings():
    h = th.TickHistogram()
    for _ in range(990):
        h.add(12e-6)
    before = th.dense(th.sparse(h.snapshot()))
    assert before == list(h.snapshot())  # the status's sparse form round-trips
    for _ in range(999):
        h.add(3e-6)
    h.add(5e-3)  # one late tick in the window
    window = th.diff(list(h.snapshot()), before)
    assert sum(window) == 1000
    assert th.quantile_upper_us(window, 0.5) == 4.0
    assert th.quantile_upper_us(window, 0.999) == 4.0  # 999 of 1000 at 3 us
    big = th.max_upper_us(window)
    assert 5000 < big <= 5000 * 1.125
    assert th.quantile_upper_us([0] * th.BINS, 0.999) is None
    assert th.max_upper_us([0] * th.BINS) is None


def test_the_runner_counts_every_tick_and_the_snapshot_publishes_the_counts():
    """Every tick adds one gap; every full-rate tick (not the idle pace, where the runner waits
    on an event and lateness means nothing) adds one lateness, as its lateness deque does."""
    from hw.clock import TickClock
    from hw.config import load_config
    from hw.control.loop import ControlLoop
    from hw.control.runner import LoopRunner
    from hw.hal.board import build_sim_board

    cfg = load_config(None)
    clock = TickClock()  # the runner moves it: a pause of the host is no stall (as --sim-time)
    board = build_sim_board(cfg, clock)
    loop = ControlLoop(cfg, board, clock)
    runner = LoopRunner(loop, tick_clock=clock)
    runner.start()
    try:
        loop.run_post()  # the self-test runs at the full rate
        deadline = time.monotonic() + 30.0
        while loop.post_result is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
        board.close()
    assert loop.post_result is not None and loop.post_result["passed"] is True
    late, gap = runner.late_hist.snapshot(), runner.gap_hist.snapshot()
    assert sum(gap) == loop.ticks  # one gap per tick, none lost
    assert 0 < sum(late) == len(runner.late_us) <= loop.ticks
    snap = loop.snapshot
    assert list(snap.late_hist) == list(late) and list(snap.gap_hist) == list(gap)  # live counts
