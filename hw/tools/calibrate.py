"""The calibration step: writes a board file (``hw.config.boardfile``) with its checksum.

    python -m hw.calibrate nominal --out board.yaml [--board-id ID]
        the reference design's nominal values (docs/hardware.md), for a board built to it;
    python -m hw.calibrate write VALUES.yaml --out board.yaml [--board-id ID]
        values measured on the bench (a ``hardware:`` mapping, only what differs from nominal);
    python -m hw.calibrate measure --sim --out board.yaml [--board-id ID]
        measures the three scale factors on the simulated board through the test load;
    python -m hw.calibrate verify board.yaml
        checks a board file (checksum and every value) without writing anything.

Nothing is written unless the result is valid together with the packaged defaults (every value in
range, every cross-check): a bad value exits 2 with the file and the key, and the old file stays.
On the appliance the board file lives at ``/etc/microcurrent-kiosk/board.yaml`` (the daemon's
default; ``--board PATH`` or ``MCK_BOARD`` choose another).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hw.config import Config, ConfigError, Problem, load_config
from hw.config.boardfile import (
    BOARD_SECTIONS,
    FORMAT,
    board_text,
    read_board,
    sim_board_path,
    write_board,
)
from hw.config.yamlfile import _read_yaml
from hw.safety import Guard

# How many codes either side of zero the measurement drives: about 200 uA, the POST check current.
MEASURE_CODES = 410


def nominal_hardware() -> dict:
    """The reference design's values: the simulated board is built to exactly these."""
    return copy.deepcopy(read_board(sim_board_path()))


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def body_for(hardware: Mapping, *, board_id: str, method: str, now: _dt.datetime | None = None):
    now = now or _dt.datetime.now(_dt.UTC)
    return {
        "format": FORMAT,
        "board_id": board_id,
        "method": method,
        "written_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hardware": dict(hardware),
    }


def check_body(body: Mapping, shown_as: str) -> Config:
    """Validate a candidate board file with the packaged defaults; errors name ``shown_as``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "board.yaml"
        path.write_text(board_text(body), encoding="utf-8")
        try:
            return load_config(None, env={}, board_path=path)
        except ConfigError as e:
            raise ConfigError(
                [
                    Problem(shown_as if p.file == str(path) else p.file, p.key, p.value, p.allowed)
                    for p in e.problems
                ]
            ) from None


def measured_values(values_path: Path) -> dict:
    """The ``hardware`` mapping of a measured-values file, merged over the nominal design."""
    data = _read_yaml(values_path)
    problems = [
        Problem(str(values_path), str(k), data[k], "unknown key (expected only `hardware:`)")
        for k in data
        if k != "hardware"
    ]
    hw = data.get("hardware")
    if not isinstance(hw, Mapping):
        problems.append(Problem(str(values_path), "hardware", hw, "must be a mapping"))
    else:
        problems += [
            Problem(str(values_path), f"hardware.{k}", hw[k], "not a section of a board file")
            for k in hw
            if k not in BOARD_SECTIONS
        ]
    if problems:
        raise ConfigError(problems)
    return _merge(nominal_hardware(), hw)


def measure_sim(seed: int = 1) -> dict[str, float]:
    """Measure the scale factors on the simulated board, in simulated time.

    The reference is the test load: the current is V / R from the electrode-voltage channel across
    ``test_load_ohm`` (on a real board, R and the CH1 scale come from a bench meter). Drives
    +/- ``MEASURE_CODES`` into the test load; the DAC's scale is the current per code (it includes
    the stage's gain), the ADC's is the current per current-channel code; the comparator's is the
    current over the lowest DAC B code that still holds (a bisection, re-arming in between)."""
    from hw.clock import SimClock
    from hw.hal.board import build_sim_board
    from hw.hal.chips.mcp4922 import CHANNEL_B, DacWord

    cfg = load_config(None, env={})  # the sim as built: the packaged board file
    fe, ch = cfg.hardware.front_end, cfg.hardware.adc_channels
    clock = SimClock()
    board = build_sim_board(cfg, clock, seed=seed)
    lines, dac, adc = board.lines, board.dac, board.adc
    guard = Guard(board, clock)  # the one guarded enable, even on this private simulated board
    kick = [False]

    def wait(seconds: float) -> None:
        for _ in range(max(1, round(seconds / 0.0005))):
            kick[0] = not kick[0]
            lines.kick_pin.state = kick[0]
            clock.advance(0.0005)
            board.sim.advance()

    def mean(channel: int, n: int = 64) -> float:
        return sum(adc.read(channel) for _ in range(n)) / n

    def rearm() -> None:
        lines.latch_rearm.on()
        wait(0.001)
        lines.latch_rearm.off()
        wait(0.001)

    try:
        if not guard.enable(relay=False):
            raise RuntimeError("the guard refused the DAC")
        dac.write_a(fe.dac_zero_code)
        dac.write(DacWord(CHANNEL_B, 4095))
        wait(0.002)
        rearm()
        lines.test_load.on()
        if not guard.enable():
            raise RuntimeError("the guard refused the output")
        amps, codes = {}, {}
        for sign in (1, -1):
            dac.write_a(fe.dac_zero_code + sign * MEASURE_CODES)
            wait(0.005)
            volts = (mean(ch.electrode_voltage) - 2048) * fe.electrode_v_per_code
            amps[sign] = volts / fe.test_load_ohm * 1e6
            codes[sign] = mean(ch.current)
        i_ua = (amps[1] - amps[-1]) / 2
        dac_ua = i_ua / MEASURE_CODES
        adc_ua = (amps[1] - amps[-1]) / (codes[1] - codes[-1])
        lo, hi = 1, 4095  # the comparator trips at lo, holds at hi (bisection invariant)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            dac.write_a(fe.dac_zero_code)
            dac.write(DacWord(CHANNEL_B, mid))
            wait(0.001)
            rearm()
            dac.write_a(fe.dac_zero_code + MEASURE_CODES)
            wait(0.002)
            if lines.latch_pin.state:
                lo = mid
            else:
                hi = mid
        threshold_ua = amps[1] / hi
        return {
            "dac_ua_per_code": round(dac_ua, 6),
            "adc_ua_per_code": round(adc_ua, 6),
            "threshold_ua_per_code": round(threshold_ua, 6),
        }
    finally:
        lines.output_enable.off()
        lines.test_load.off()
        board.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.calibrate", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("nominal", "write", "measure"):
        p = sub.add_parser(name)
        if name == "write":
            p.add_argument("values", help="YAML with a `hardware:` mapping of measured values")
        if name == "measure":
            p.add_argument("--sim", action="store_true", help="measure the simulated board")
        p.add_argument("--out", required=True, help="the board file to write")
        p.add_argument("--board-id", default="board-1", help="names the board (a-z, 0-9, -)")
    p = sub.add_parser("verify")
    p.add_argument("board", help="the board file to check")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "verify":
            load_config(None, env={}, board_path=args.board)
            print(f"{args.board}: valid board file")
            return 0
        if args.cmd == "nominal":
            hardware, method = nominal_hardware(), "nominal"
        elif args.cmd == "write":
            hardware, method = measured_values(Path(args.values)), "measured"
        else:
            if not args.sim:
                print(
                    "measure: only the simulated board can measure itself (--sim); on a real "
                    "board measure with a bench meter and use `write`",
                    file=sys.stderr,
                )
                return 2
            hardware = nominal_hardware()
            hardware["front_end"] = {**hardware["front_end"], **measure_sim()}
            method = "measured"
        body: dict[str, Any] = body_for(hardware, board_id=args.board_id, method=method)
        check_body(body, args.values if args.cmd == "write" else args.out)
        write_board(args.out, body)
    except ConfigError as e:
        print(f"calibration refused, nothing written:\n{e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: board file written ({method})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
