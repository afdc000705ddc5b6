"""MCP4922 (DAC) and MCP3208 (ADC) codecs and drivers, checked bit by bit against the datasheets."""

from __future__ import annotations

import pytest

from hw.hal.bus import CheckedBus, SpiFault
from hw.hal.chips import mcp3208, mcp4922
from hw.hal.chips.mcp3208 import Mcp3208
from hw.hal.chips.mcp4922 import CHANNEL_A, CHANNEL_B, DacWord, Mcp4922


class FakeBus:
    """A spidev stand-in that records every transfer and answers from a script."""

    max_speed_hz = 1_000_000
    mode = 0

    def __init__(self, reply=None):
        self.transfers: list[list[int]] = []
        self.reply = reply  # callable(tx) -> rx, or None to echo zeros
        self.closed = False

    def xfer2(self, data):
        self.transfers.append(list(data))
        if self.reply is None:
            return [0] * len(data)
        return self.reply(list(data))

    def close(self):
        self.closed = True


# --------------------------------------------------------------------------------------------
# MCP4922
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [CHANNEL_A, CHANNEL_B])
@pytest.mark.parametrize("active", [True, False])
def test_dac_round_trip_every_code(channel, active):
    for code in range(4096):
        for buffered in (False, True):
            for gain_1x in (False, True):
                word = DacWord(channel, code, buffered=buffered, gain_1x=gain_1x, active=active)
                data = mcp4922.encode(word)
                assert isinstance(data, bytes) and len(data) == 2
                assert mcp4922.decode(data) == word
                assert mcp4922.decode(list(data)) == word


@pytest.mark.parametrize(
    ("field", "bit"),
    [("channel", 15), ("buffered", 14), ("gain_1x", 13), ("active", 12)],
)
def test_dac_control_bits_are_where_the_datasheet_puts_them(field, bit):
    base = DacWord(CHANNEL_A, 0, buffered=False, gain_1x=False, active=False)
    assert mcp4922.encode(base) == b"\x00\x00"
    value = 1 if field == "channel" else True
    word = DacWord(**{**_fields(base), field: value})
    v = int.from_bytes(mcp4922.encode(word), "big")
    assert v == 1 << bit


def _fields(w: DacWord) -> dict:
    return {
        "channel": w.channel,
        "code": w.code,
        "buffered": w.buffered,
        "gain_1x": w.gain_1x,
        "active": w.active,
    }


def test_dac_data_bits_are_the_low_twelve_msb_first():
    for code in (0, 1, 0x0FF, 0x100, 0x555, 0xAAA, 0xFFF):
        word = DacWord(CHANNEL_A, code, buffered=False, gain_1x=False, active=False)
        hi, lo = mcp4922.encode(word)
        assert hi == code >> 8
        assert lo == code & 0xFF


def test_dac_default_word_is_channel_a_unbuffered_gain1_active():
    # 0b0011 in the top nibble: A, unbuffered, 1x gain, active.
    assert mcp4922.encode(DacWord(CHANNEL_A, 0x800)) == bytes((0x38, 0x00))
    assert mcp4922.encode(DacWord(CHANNEL_B, 0xFFF)) == bytes((0xBF, 0xFF))


@pytest.mark.parametrize("code", [-1, 4096, 65535, 1.0, 2048.5, True, False, None, "1"])
def test_dac_encode_refuses_bad_codes(code):
    with pytest.raises(ValueError):
        mcp4922.encode(DacWord(CHANNEL_A, code))


@pytest.mark.parametrize("channel", [-1, 2, 3, None, "A"])
def test_dac_encode_refuses_bad_channels(channel):
    with pytest.raises(ValueError):
        mcp4922.encode(DacWord(channel, 0))


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00", [0], [0, 0, 0]])
def test_dac_decode_refuses_wrong_length(data):
    with pytest.raises(ValueError):
        mcp4922.decode(data)


def test_dac_driver_writes_exactly_two_bytes_per_word():
    bus = FakeBus()
    dac = Mcp4922(bus)
    dac.write_a(0)
    dac.write_a(2048)
    dac.write_a(4095)
    dac.write(DacWord(CHANNEL_B, 1234))
    assert len(bus.transfers) == 4
    assert all(len(t) == 2 for t in bus.transfers)
    decoded = [mcp4922.decode(t) for t in bus.transfers]
    assert decoded == [
        DacWord(CHANNEL_A, 0),
        DacWord(CHANNEL_A, 2048),
        DacWord(CHANNEL_A, 4095),
        DacWord(CHANNEL_B, 1234),
    ]
    assert dac.last_code_a == 4095
    assert dac.last_code_b == 1234


def test_dac_write_a_matches_encode_for_every_code():
    bus = FakeBus()
    dac = Mcp4922(bus)
    for code in range(4096):
        dac.write_a(code)
    assert [bytes(t) for t in bus.transfers] == [
        mcp4922.encode(DacWord(CHANNEL_A, c)) for c in range(4096)
    ]


@pytest.mark.parametrize("code", [-1, 4096, 10_000])
def test_dac_driver_refuses_out_of_range_codes_without_writing(code):
    bus = FakeBus()
    dac = Mcp4922(bus)
    dac.write_a(100)
    with pytest.raises(ValueError):
        dac.write_a(code)
    assert len(bus.transfers) == 1
    assert dac.last_code_a == 100


def test_dac_shutdown_sends_zero_then_shuts_both_channels():
    bus = FakeBus()
    dac = Mcp4922(bus)
    dac.write(DacWord(CHANNEL_B, 3000))
    dac.write_a(3000)
    bus.transfers.clear()
    dac.shutdown(2048)
    words = [mcp4922.decode(t) for t in bus.transfers]
    assert all(len(t) == 2 for t in bus.transfers)
    assert len(words) == 3
    assert words[0] == DacWord(CHANNEL_A, 2048, active=True)
    assert words[1].channel == CHANNEL_A and words[1].active is False
    assert words[2].channel == CHANNEL_B and words[2].active is False
    assert dac.last_code_a is None and dac.last_code_b is None


def test_dac_close_closes_the_bus():
    bus = FakeBus()
    Mcp4922(bus).close()
    assert bus.closed


# --------------------------------------------------------------------------------------------
# MCP3208
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ch", range(8))
def test_adc_encode_read_per_datasheet(ch):
    tx = mcp3208.encode_read(ch)
    assert tx == [0b110 | (ch >> 2), (ch & 3) << 6, 0]
    # start bit, single-ended, D2 in byte 0; D1 D0 at the top of byte 1
    assert tx[0] & 0b100 and tx[0] & 0b010
    assert mcp3208.decode_request(tx) == ch


@pytest.mark.parametrize("ch", [-1, 8, 1.0, True, None, "0"])
def test_adc_encode_read_refuses_bad_channels(ch):
    with pytest.raises(ValueError):
        mcp3208.encode_read(ch)


def test_adc_decode_request_refuses_non_start_and_differential():
    with pytest.raises(SpiFault):
        mcp3208.decode_request([0b010, 0, 0])  # no start bit
    with pytest.raises(SpiFault):
        mcp3208.decode_request([0b100, 0, 0])  # differential
    with pytest.raises(SpiFault):
        mcp3208.decode_request([0b110, 0])  # short


def test_adc_decode_reply_every_code_and_dont_care_bits():
    for code in range(4096):
        rx = mcp3208.encode_reply(code)
        assert len(rx) == 3
        assert mcp3208.decode_reply(rx) == code
        # The first byte and the three bits above the null bit are don't-care.
        noisy = [0xFF, rx[1] | 0xE0, rx[2]]
        assert mcp3208.decode_reply(noisy) == code
        assert mcp3208.decode_reply(bytes(noisy)) == code


def test_adc_decode_reply_by_hand():
    assert mcp3208.decode_reply([0, 0x0A, 0xBC]) == 0xABC
    assert mcp3208.decode_reply([0, 0x0F, 0xFF]) == 4095
    assert mcp3208.decode_reply([0, 0x00, 0x00]) == 0


@pytest.mark.parametrize("rx", [[0, 0x10, 0], [0xFF, 0xFF, 0xFF], [0, 0x1F, 0xFF]])
def test_adc_null_bit_set_is_a_bus_fault(rx):
    with pytest.raises(SpiFault):
        mcp3208.decode_reply(rx)


@pytest.mark.parametrize("rx", [[], [0], [0, 0], [0, 0, 0, 0]])
def test_adc_wrong_length_reply_is_a_bus_fault(rx):
    with pytest.raises(SpiFault):
        mcp3208.decode_reply(rx)


def test_adc_encode_reply_clamps():
    assert mcp3208.decode_reply(mcp3208.encode_reply(-5)) == 0
    assert mcp3208.decode_reply(mcp3208.encode_reply(5000)) == 4095


def _chip_model(codes: dict[int, int]):
    """A bus that answers like an MCP3208 with fixed codes per channel."""

    def reply(tx):
        return mcp3208.encode_reply(codes[mcp3208.decode_request(tx)])

    return reply


def test_adc_driver_reads_each_channel():
    codes = {ch: (ch * 517 + 3) % 4096 for ch in range(8)}
    bus = FakeBus(_chip_model(codes))
    adc = Mcp3208(CheckedBus(bus, "ADC"))
    for ch in range(8):
        assert adc.read(ch) == codes[ch]
    assert bus.transfers == [mcp3208.encode_read(ch) for ch in range(8)]
    assert all(len(t) == 3 for t in bus.transfers)


def test_adc_driver_null_bit_raises():
    bus = FakeBus(lambda tx: [0xFF, 0xFF, 0xFF])  # MISO stuck high
    adc = Mcp3208(CheckedBus(bus, "ADC"))
    with pytest.raises(SpiFault):
        adc.read(0)


def test_adc_driver_short_reply_raises():
    bus = FakeBus(lambda tx: [0, 0])
    adc = Mcp3208(CheckedBus(bus, "ADC"))
    with pytest.raises(SpiFault):
        adc.read(0)


def test_adc_driver_two_byte_reply_raises_even_unchecked():
    adc = Mcp3208(FakeBus(lambda tx: [0, 0]))
    with pytest.raises(SpiFault):
        adc.read(0)


# --------------------------------------------------------------------------------------------
# CheckedBus
# --------------------------------------------------------------------------------------------


def test_checked_bus_turns_oserror_into_spifault():
    def boom(tx):
        raise OSError(5, "Input/output error")

    bus = CheckedBus(FakeBus(boom), "DAC")
    with pytest.raises(SpiFault) as e:
        bus.xfer2([1, 2])
    assert "DAC" in str(e.value)
    assert isinstance(e.value.__cause__, OSError)


def test_checked_bus_turns_any_exception_into_spifault():
    def boom(tx):
        raise RuntimeError("fake bus broke")

    with pytest.raises(SpiFault):
        CheckedBus(FakeBus(boom), "ADC").xfer2([1, 2, 3])


def test_checked_bus_passes_spifault_through():
    err = SpiFault("original")

    def boom(tx):
        raise err

    with pytest.raises(SpiFault) as e:
        CheckedBus(FakeBus(boom), "ADC").xfer2([1, 2, 3])
    assert e.value is err


@pytest.mark.parametrize("rx", [None, [], [0], [0, 0, 0, 0]])
def test_checked_bus_refuses_short_or_long_transfers(rx):
    bus = CheckedBus(FakeBus(lambda tx: rx), "ADC")
    with pytest.raises(SpiFault):
        bus.xfer2([1, 2, 3])


def test_checked_bus_forwards_settings_and_close():
    raw = FakeBus()
    bus = CheckedBus(raw, "DAC")
    assert bus.max_speed_hz == raw.max_speed_hz
    assert bus.mode == raw.mode
    assert bus.xfer2([7, 8]) == [0, 0]
    assert raw.transfers == [[7, 8]]
    bus.close()
    assert raw.closed


def test_dac_driver_over_failing_checked_bus_raises_spifault():
    def boom(tx):
        raise OSError(5, "EIO")

    dac = Mcp4922(CheckedBus(FakeBus(boom), "DAC"))
    with pytest.raises(SpiFault):
        dac.write_a(2048)
    with pytest.raises(SpiFault):
        dac.shutdown(2048)


# --------------------------------------------------------------------------------------------
# MCP3208 chip model (what the simulated chip shifts out, clock by clock)
# --------------------------------------------------------------------------------------------


def _const(code):
    return lambda single_ended, d: code


def test_adc_chip_model_answers_the_standard_request_as_the_driver_expects():
    for ch in range(8):
        for code in (0, 1, 0x800, 0xABC, 4095):
            seen = []

            def convert(se, d, code=code, seen=seen):
                seen.append((se, d))
                return code

            rx = mcp3208.respond(mcp3208.encode_read(ch), convert)
            assert seen == [(True, ch)]
            assert mcp3208.decode_reply(rx) == code
            # High impedance before the null bit reads high: byte 0 and the top of byte 1.
            assert rx[0] == 0xFF and rx[1] >> 5 == 0b111


def test_adc_chip_model_by_hand():
    # 0xABC on CH3: ???????? | ???0 1010 | 1011 1100, with ? read high.
    assert mcp3208.respond([0b0000_0110, 0b1100_0000, 0], _const(0xABC)) == [0xFF, 0xEA, 0xBC]
    # Start bit one clock early: everything comes out one clock early (null bit at 0x20, B11 at
    # 0x10 where the driver expects the null bit), and B1 (LSB-first) fills the last clock.
    assert mcp3208.respond([0b0000_1101, 0b1000_0000, 0], _const(0xABC)) == [0xFF, 0xD5, 0x78]
    # Start bit one clock late: B0 is still inside the chip when the clock stops.
    assert mcp3208.respond([0b0000_0011, 0b0110_0000, 0], _const(0xABC)) == [0xFF, 0xF5, 0x5E]
    # 32 clocks: B11..B0, then LSB first B1..B8 (0xABC: 0 1 1 1 1 0 1 0) in the fourth byte.
    rx = mcp3208.respond([0b0000_0110, 0b1100_0000, 0, 0], _const(0xABC))
    assert rx == [0xFF, 0xEA, 0xBC, 0b0111_1010]


def test_adc_chip_model_leading_zeros_are_ignored():
    """More leading zeros (a 4-byte request) start the conversion later, as on the chip."""
    rx = mcp3208.respond([0, 0b0000_0110, 0b1100_0000, 0], _const(0x5A5))
    assert rx[0] == 0xFF and mcp3208.decode_reply(rx[1:]) == 0x5A5


@pytest.mark.parametrize("tx", [[0, 0, 0], [0, 0, 0b0000_0011], [0, 0, 0b0000_0110]])
def test_adc_chip_model_without_a_complete_request_reads_all_ones(tx):
    calls = []
    rx = mcp3208.respond(tx, lambda se, d: calls.append(d) or 0)
    assert rx == [0xFF] * len(tx) and calls == []
    with pytest.raises(SpiFault):
        mcp3208.decode_reply(rx)


def test_adc_chip_model_passes_sgl_diff_and_selection():
    seen = []
    mcp3208.respond([0b0000_0100 | 1, 0b0100_0000, 0], lambda se, d: seen.append((se, d)) or 0)
    assert seen == [(False, 0b101)]


def test_adc_differential_pairs_per_datasheet():
    assert [mcp3208.differential_pair(d) for d in range(8)] == [
        (0, 1),
        (1, 0),
        (2, 3),
        (3, 2),
        (4, 5),
        (5, 4),
        (6, 7),
        (7, 6),
    ]


def test_adc_chip_model_fast_path_matches_the_bit_by_bit_model():
    """The standard frame takes a fast path; a leading zero byte forces the clock-by-clock path
    and delays everything by 8 clocks: the two must agree bit for bit."""
    import random

    rng = random.Random(6)
    for _ in range(2000):
        tx = [0b100 | rng.randrange(4), rng.randrange(256), rng.randrange(256)]
        code = rng.randrange(4096)
        seen_fast, seen_slow = [], []
        fast = mcp3208.respond(tx, lambda se, d, s=seen_fast, c=code: s.append((se, d)) or c)
        slow = mcp3208.respond([0, *tx], lambda se, d, s=seen_slow, c=code: s.append((se, d)) or c)
        assert fast == slow[1:] and seen_fast == seen_slow, (tx, code)
