"""The simulated board's SPI chips: the buses the drivers talk to, byte for byte.

:class:`SimDacBus` decodes MCP4922 words into the plant; :class:`SimAdcBus` answers MCP3208
requests with the plant's analog values per channel. Each transfer releases the GIL once, as
py-spidev does, and its time is counted as the plant's (``SimBoard.plant_s``), not the loop's.
"""

from __future__ import annotations

import select
import threading
from time import perf_counter
from typing import TYPE_CHECKING

from hw.hal.chips import mcp3208, mcp4922

if TYPE_CHECKING:
    from hw.hal.sim.board import SimBoard


def _yield_gil() -> None:
    """Release the GIL once, as py-spidev's xfer2 does around its ioctl, so other threads run
    here. A zero-timeout select() is a syscall that drops the GIL and returns at once, like the
    ioctl: about 1.5 us here. (time.sleep(0) sleeps the thread's timer slack, 50 us by default,
    which made the simulated bus the most expensive part of a tick.) With no other Python thread
    the release is unobservable, and is skipped so the simulated-time tests stay fast."""
    if threading.active_count() > 1:
        select.select((), (), (), 0)


_WORDS: dict[int, mcp4922.DacWord] = {}


def _decode_word(b0: int, b1: int) -> mcp4922.DacWord:
    """mcp4922.decode, remembered per 16-bit value (immutable words; at most 65536)."""
    v = (b0 << 8) | b1
    word = _WORDS.get(v)
    if word is None:
        word = _WORDS[v] = mcp4922.decode((b0, b1))
    return word


class _SimBus:
    max_speed_hz = 0
    mode = 0

    def __init__(self, board: SimBoard):
        self._board = board
        self.closed = False
        self.transfers = 0

    def close(self) -> None:
        self.closed = True

    def xfer2(self, data):
        _yield_gil()  # outside the plant's time: the real bus releases the GIL here too
        t0 = perf_counter()
        try:
            return self._xfer(data)
        finally:
            self._board.plant_s += perf_counter() - t0


class SimDacBus(_SimBus):
    """MCP4922 on its chip select: decodes each 16-bit word into the plant."""

    def _xfer(self, data):
        b = self._board
        with b.lock:
            b._check_spi()
            self.transfers += 1
            now = b.clock.now()
            p = b.plant
            p.advance(now)
            if len(data) < 2:
                return [0] * len(data)  # /CS rose before 16 clocks: the chip ignores it
            # Clocks after the 16th are ignored (datasheet section 5.1).
            word = _decode_word(data[0], data[1])
            if p.dac_stuck:
                return [0] * len(data)
            if word.channel == mcp4922.CHANNEL_A:
                # "At zero" is judged by what the stage really drives (calibration applied).
                was_zero = abs(p.dac_target_ua) < 1.0
                p.dac_a_word = word
                if abs(p.dac_target_ua) < 1.0 and not was_zero:
                    b.t_dac_zero = now
            else:
                p.dac_b_word = word
            return [0] * len(data)  # the MCP4922 has no data output: MISO floats


class SimAdcBus(_SimBus):
    """MCP3208 on its chip select: converts the plant's analog values per channel."""

    def __init__(self, board: SimBoard, roles: dict[int, str]):
        super().__init__(board)
        self._roles = roles

    def _xfer(self, data):
        b = self._board
        with b.lock:
            b._check_spi()
            self.transfers += 1
            b.plant.observe(b.clock.now())
            # Bit-exact: leading zeros, the start bit, SGL/DIFF and D2..D0 act as on the chip.
            return mcp3208.respond(data, self._convert)

    def _convert(self, single_ended: bool, d: int) -> int:
        if single_ended:
            return self._channel_code(d)
        # Pseudo-differential: IN+ minus IN-, 0 when IN- is higher (datasheet section 4.1).
        plus, minus = mcp3208.differential_pair(d)
        return max(0, self._channel_code(plus) - self._channel_code(minus))

    def _channel_code(self, channel: int) -> int:
        b = self._board
        if b.adc_stuck_code is not None:
            return b.adc_stuck_code
        role = self._roles.get(channel, "")
        if role == "current" and b.adc_current_stuck_code is not None:
            return b.adc_current_stuck_code
        code = b.plant.adc_code(role)
        b.last_adc_code = code
        b.last_adc_codes[role] = code
        return code
