"""A fixed log-linear histogram of microsecond durations, for the real-time loop's timing.

The runner counts every tick's start lateness and the gap between tick starts in one of these:
O(1) and no growing structure per tick (an array of ``BINS`` counters, incremented in place).
Counts only ever grow, so a reader takes the figures of any window by subtracting two readings
(``diff``), whoever else reads them, with no reset.

Bins: 0..15 us one microsecond wide, then 8 bins per octave (each at most 1/8 of its lower edge
wide, so an upper edge over-states a duration by at most 12.5 %) up to 262 ms; the last bin also
holds everything longer.
"""

from __future__ import annotations

from array import array

BINS = 128


def bin_of(us: int) -> int:
    """The bin of a duration in whole microseconds (negative counts as 0)."""
    if us < 16:
        return us if us > 0 else 0
    b = us.bit_length()
    i = 8 * b - 24 + ((us >> (b - 4)) & 7)
    return i if i < BINS else BINS - 1


def lower_us(i: int) -> int:
    """Smallest duration (us) counted in bin ``i``."""
    if i < 16:
        return i
    octave, sub = divmod(i - 16, 8)
    return (8 + sub) << (octave + 1)


def upper_us(i: int) -> int:
    """First duration (us) above bin ``i`` (for the last bin: its nominal edge, 262144)."""
    return lower_us(i + 1)


class TickHistogram:
    """Counts of durations per bin; ``add`` is called once per tick on the loop's thread."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = array("Q", bytes(8 * BINS))

    def add(self, seconds: float) -> None:
        self.counts[bin_of(int(seconds * 1e6))] += 1

    def snapshot(self) -> tuple[int, ...]:
        return tuple(self.counts)


def sparse(counts) -> list[list[int]]:
    """``[[lower_us, count], ...]`` for the bins that hold anything (the status's form)."""
    return [[lower_us(i), n] for i, n in enumerate(counts) if n]


def dense(pairs) -> list[int]:
    """The inverse of :func:`sparse`: a count per bin."""
    counts = [0] * BINS
    for lo, n in pairs or ():
        counts[bin_of(int(lo))] += int(n)
    return counts


def diff(after, before) -> list[int]:
    """Counts of the window between two readings (dense)."""
    return [a - b for a, b in zip(after, before, strict=True)]


def quantile_upper_us(counts, q: float) -> float | None:
    """Upper edge (us) of the bin that holds quantile ``q`` (0..1): the value is at most this.
    None when the window holds nothing."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if n and seen >= rank:
            return float(upper_us(i))
    return float(upper_us(BINS - 1))


def max_upper_us(counts) -> float | None:
    """Upper edge (us) of the highest bin that holds anything; None when empty."""
    for i in range(len(counts) - 1, -1, -1):
        if counts[i]:
            return float(upper_us(i))
    return None
