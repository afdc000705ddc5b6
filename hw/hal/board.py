"""One typed hardware interface with a real and a simulated backend behind one factory.

A :class:`Board` is what the control loop drives: the DAC and ADC drivers (over a bus), the GPIO
lines (over a pin factory) and, on the simulated backend, the :class:`~hw.hal.sim.board.SimBoard`
for fault injection. ``build_board(cfg, sim=False)`` refuses to start off the Pi rather than
pretend.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from hw.clock import Clock, MonotonicClock
from hw.config import Config
from hw.hal.bus import CheckedBus, SpiFault, open_spidev
from hw.hal.chips.mcp3208 import Mcp3208
from hw.hal.chips.mcp4922 import Mcp4922
from hw.hal.lines import Lines


class BoardUnavailable(RuntimeError):
    """The real board was asked for where there is none (no SPI device, no GPIO chip)."""


@dataclass
class Board:
    dac: Mcp4922
    adc: Mcp3208
    lines: Lines
    zero_code: int  # DAC A code for 0 uA
    sim: object | None = None  # hw.hal.sim.board.SimBoard on the simulated backend
    # Serialises SPI between the loop and a trip() from another thread.
    bus_lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def close(self) -> None:
        """Output enable low first, DAC to zero and shut down, then release everything."""
        if self._closed:
            return
        self._closed = True
        try:
            self.lines.output_enable.off()
        finally:
            try:
                self.dac.shutdown(self.zero_code)
            except Exception:  # noqa: BLE001 - the lines must still be released
                pass
            self.lines.close()
            for chip in (self.dac, self.adc):
                try:
                    chip.close()
                except Exception:  # noqa: BLE001
                    pass


def build_sim_board(cfg: Config, clock: Clock, seed: int = 1) -> Board:
    from hw.hal.sim.board import SimBoard

    sim = SimBoard(cfg, clock, seed=seed)
    lines = Lines(cfg.hardware.pins, pin_factory=sim.factory)
    sim.sync_inputs()
    board = Board(
        dac=Mcp4922(CheckedBus(sim.dac_bus, "DAC")),
        adc=Mcp3208(CheckedBus(sim.adc_bus, "ADC")),
        lines=lines,
        zero_code=cfg.hardware.front_end.dac_zero_code,
        sim=sim,
    )
    return board


def build_real_board(cfg: Config) -> Board:
    hw = cfg.hardware
    for spi in (hw.dac_spi, hw.adc_spi):
        dev = Path(f"/dev/spidev{spi.bus}.{spi.device}")
        if not dev.exists():
            raise BoardUnavailable(
                f"{dev} does not exist: this is not the appliance, or SPI is not enabled "
                "(dtparam=spi=on). Use --sim on a desktop."
            )
    try:
        from gpiozero.pins.lgpio import LGPIOFactory

        factory = LGPIOFactory()
    except Exception as e:  # noqa: BLE001 - any failure here means no usable GPIO
        raise BoardUnavailable(f"no GPIO chip usable through lgpio: {e}") from e
    lines = Lines(hw.pins, pin_factory=factory)  # enable low before any SPI is opened
    try:
        dac = Mcp4922(open_spidev(**hw.dac_spi.model_dump(), name="DAC"))
        adc = Mcp3208(open_spidev(**hw.adc_spi.model_dump(), name="ADC"))
    except SpiFault as e:
        lines.close()
        raise BoardUnavailable(str(e)) from e
    return Board(dac=dac, adc=adc, lines=lines, zero_code=hw.front_end.dac_zero_code)


def build_board(cfg: Config, *, sim: bool, clock: Clock | None = None, seed: int = 1) -> Board:
    """The factory: the simulated board for desktops and tests, the real one on the appliance."""
    if sim:
        return build_sim_board(cfg, clock or MonotonicClock(), seed=seed)
    return build_real_board(cfg)
