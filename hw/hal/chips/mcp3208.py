"""MCP3208 8-channel 12-bit ADC (Microchip DS21298): pure encode/decode plus a thin driver.

The driver only uses single-ended conversions, three bytes each way (datasheet section 6.1, "Using
the MCP3204/3208 with MCUs"):

    sent      0 0 0 0 0 1 SGL D2 | D1 D0 x x x x x x | x x x x x x x x
    received  ? ? ? ? ? ? ?  ?   | ? ? ? 0 B11 B10 B9 B8 | B7 ... B0

The bit before B11 is the null bit and is always 0 from a working chip. A floating or shorted MISO
line reads all ones, so a set null bit is reported as a bus fault rather than a value of 4095.
"""

from __future__ import annotations

from collections.abc import Callable

from hw.hal.bus import SpiBus, SpiFault

CODE_MAX = 4095


def encode_read(channel: int) -> list[int]:
    """The three bytes that start a single-ended conversion of ``channel`` (0..7)."""
    if not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel <= 7:
        raise ValueError(f"MCP3208 channel must be 0..7, not {channel!r}")
    return [0b0000_0110 | (channel >> 2), (channel & 0b11) << 6, 0]


def decode_reply(rx: bytes | list[int]) -> int:
    """The 12-bit result from a three-byte reply. Raises SpiFault on a malformed reply."""
    if len(rx) != 3:
        raise SpiFault(f"MCP3208 reply must be 3 bytes, got {len(rx)}")
    if rx[1] & 0x10:
        raise SpiFault("MCP3208 null bit set: MISO stuck high or chip missing")
    return ((rx[1] & 0x0F) << 8) | rx[2]


def decode_request(tx: bytes | list[int]) -> int:
    """The channel a standard three-byte request asks for (for fakes in tests; the simulated chip
    answers bit by bit with :func:`respond`, as the real one does)."""
    if len(tx) != 3 or not tx[0] & 0b100:
        raise SpiFault("not an MCP3208 start sequence")
    if not tx[0] & 0b010:
        raise SpiFault("differential mode is not used on this board")
    return ((tx[0] & 1) << 2) | (tx[1] >> 6)


def respond(tx: bytes | list[int], convert: Callable[[bool, int], int]) -> list[int]:
    """What the chip shifts out on MISO for the bytes ``tx`` on MOSI, clock by clock (datasheet
    figures 5-1 and 6-1); used by the simulated chip.

    The first high bit on MOSI after /CS falls is the start bit; leading zeros are ignored. The
    next four bits are SGL/DIFF, D2, D1, D0. ``convert(single_ended, d)`` returns the 12-bit
    result for that selection. One clock of sampling (DOUT still high-impedance) follows, then the
    null bit (0), B11..B0 MSB first, then B1..B11 LSB first, then zeros for as long as the clock
    runs. High impedance reads as 1 (a floating MISO reads high on this board). A request with no
    start bit, or one that ends before D0, starts no conversion: every bit reads 1.
    """
    if len(tx) == 3 and tx[0] & 0xFC == 0b100:
        # Fast path, same bits: the standard frame (start bit at clock 6), every loop tick.
        d = ((tx[0] & 1) << 2) | (tx[1] >> 6)
        code = min(max(int(convert(bool(tx[0] & 0b10), d)), 0), CODE_MAX)
        return [0xFF, 0xE0 | (code >> 8), code & 0xFF]
    bits = [(byte >> (7 - k)) & 1 for byte in tx for k in range(8)]
    out = [1] * len(bits)
    try:
        s = bits.index(1)
    except ValueError:
        s = len(bits)
    if s + 4 < len(bits):
        d = (bits[s + 2] << 2) | (bits[s + 3] << 1) | bits[s + 4]
        code = min(max(int(convert(bool(bits[s + 1]), d)), 0), CODE_MAX)
        msb_first = [(code >> (11 - k)) & 1 for k in range(12)]
        stream = [0, *msb_first, *msb_first[-2::-1]]  # null, B11..B0, B1..B11
        for j in range(s + 6, len(bits)):
            k = j - (s + 6)
            out[j] = stream[k] if k < len(stream) else 0
    return [int("".join(map(str, out[i : i + 8])), 2) for i in range(0, len(out) - 7, 8)]


def differential_pair(d: int) -> tuple[int, int]:
    """(IN+, IN-) channels of a pseudo-differential selection D2..D0 (datasheet table 5-2)."""
    base = d & 0b110
    return (base + 1, base) if d & 1 else (base, base + 1)


def encode_reply(code: int) -> list[int]:
    """What a working chip shifts out for ``code`` (the first byte and high bits are don't-care)."""
    code = min(max(int(code), 0), CODE_MAX)
    return [0, (code >> 8) & 0x0F, code & 0xFF]


_REQUESTS = [encode_read(c) for c in range(8)]


class Mcp3208:
    """Driver over an injected spidev-compatible bus."""

    def __init__(self, bus: SpiBus):
        self._bus = bus

    def read(self, channel: int) -> int:
        """One conversion of ``channel``: a raw code 0..4095. Raises SpiFault on a bus fault."""
        rx = self._bus.xfer2(list(_REQUESTS[channel]))
        if rx[1] & 0x10 or len(rx) != 3:
            return decode_reply(rx)  # raises with the reason
        return ((rx[1] & 0x0F) << 8) | rx[2]

    def close(self) -> None:
        self._bus.close()
