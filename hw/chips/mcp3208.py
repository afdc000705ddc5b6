"""MCP3208 8-channel 12-bit ADC (Microchip DS21298): pure encode/decode plus a thin driver.

Single-ended conversion, three bytes each way (datasheet section 6.1, "Using the MCP3204/3208 with
MCUs"):

    sent      0 0 0 0 0 1 SGL D2 | D1 D0 x x x x x x | x x x x x x x x
    received  ? ? ? ? ? ? ?  ?   | ? ? ? 0 B11 B10 B9 B8 | B7 ... B0

The bit before B11 is the null bit and is always 0 from a working chip. A floating or shorted MISO
line reads all ones, so a set null bit is reported as a bus fault rather than a value of 4095.
"""

from __future__ import annotations

from hw.bus import SpiBus, SpiFault

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
    """The channel a three-byte request asks for (used by the simulated chip)."""
    if len(tx) != 3 or not tx[0] & 0b100:
        raise SpiFault("not an MCP3208 start sequence")
    if not tx[0] & 0b010:
        raise SpiFault("differential mode is not used on this board")
    return ((tx[0] & 1) << 2) | (tx[1] >> 6)


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
