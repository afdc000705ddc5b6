"""MCP4922 dual 12-bit DAC (Microchip DS21897): pure encode/decode plus a thin driver.

Write command, 16 bits, MSB first, latched on the rising edge of /CS (LDAC tied low):

    bit 15  A/B    0 = channel A, 1 = channel B
    bit 14  BUF    1 = buffered VREF input
    bit 13  /GA    1 = gain 1x (VOUT = VREF * D / 4096), 0 = gain 2x
    bit 12  /SHDN  1 = active, 0 = shut down (output switched to ~500 kOhm to ground)
    bits 11-0      D11..D0

The chip never answers on MISO, so nothing can be read back; "what the DAC holds" is known only by
what was last written, which is why the control loop re-writes the setpoint every tick and the
simulated board (hw.hal.sim) decodes the words the way the chip does.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw.hal.bus import SpiBus

CHANNEL_A = 0
CHANNEL_B = 1
CODE_MAX = 4095


@dataclass(frozen=True, slots=True)
class DacWord:
    channel: int  # 0 = A, 1 = B
    code: int  # 0..4095
    buffered: bool = False
    gain_1x: bool = True
    active: bool = True  # False = shutdown


def encode(word: DacWord) -> bytes:
    """Encode one write command as two bytes, MSB first. Raises ValueError on bad fields."""
    if word.channel not in (CHANNEL_A, CHANNEL_B):
        raise ValueError(f"MCP4922 channel must be 0 (A) or 1 (B), not {word.channel!r}")
    code = word.code
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= CODE_MAX:
        raise ValueError(f"MCP4922 code must be an int 0..4095, not {word.code!r}")
    v = (
        (word.channel << 15)
        | (int(word.buffered) << 14)
        | (int(word.gain_1x) << 13)
        | (int(word.active) << 12)
        | code
    )
    return bytes(((v >> 8) & 0xFF, v & 0xFF))


def decode(data: bytes | list[int]) -> DacWord:
    """Decode two bytes as the chip would latch them."""
    if len(data) != 2:
        raise ValueError(f"an MCP4922 command is 2 bytes, got {len(data)}")
    v = (data[0] << 8) | data[1]
    return DacWord(
        channel=(v >> 15) & 1,
        code=v & 0x0FFF,
        buffered=bool((v >> 14) & 1),
        gain_1x=bool((v >> 13) & 1),
        active=bool((v >> 12) & 1),
    )


def _precompute_a() -> list[list[int]]:
    # The loop writes channel A every tick: a lookup avoids building the word each time.
    return [list(encode(DacWord(CHANNEL_A, c))) for c in range(CODE_MAX + 1)]


class Mcp4922:
    """Driver over an injected spidev-compatible bus. Codes outside 0..4095 are refused."""

    def __init__(self, bus: SpiBus):
        self._bus = bus
        self._a_words = _precompute_a()
        self.last_code_a: int | None = None
        self.last_code_b: int | None = None

    def write_a(self, code: int) -> None:
        """Set channel A (the current setpoint). ``code`` is 0..4095."""
        if not 0 <= code <= CODE_MAX:
            raise ValueError(f"DAC code {code} out of 0..4095")
        self._bus.xfer2(self._a_words[code])
        self.last_code_a = code

    def write(self, word: DacWord) -> None:
        self._bus.xfer2(list(encode(word)))
        if word.channel == CHANNEL_A:
            self.last_code_a = word.code if word.active else None
        else:
            self.last_code_b = word.code if word.active else None

    def shutdown(self, zero_code_a: int) -> None:
        """Second path to zero: write A's zero code, then shut both channels down.

        Channel B is the comparator threshold; shut down it reads 0 V, so the hardware
        over-current latch trips too (fail-safe by construction, see docs/hardware.md).
        """
        self._bus.xfer2(self._a_words[zero_code_a])
        self._bus.xfer2(list(encode(DacWord(CHANNEL_A, zero_code_a, active=False))))
        self._bus.xfer2(list(encode(DacWord(CHANNEL_B, 0, active=False))))
        self.last_code_a = None
        self.last_code_b = None

    def close(self) -> None:
        self._bus.close()
