"""Intensity levels: the only way anything outside hw/ asks for current.

Level 1 is ``limits.level_min_ua``, level ``limits.level_count`` is ``limits.level_max_ua``, evenly
spaced between. A step's ``max_level`` caps it further. The result never exceeds
``limits.max_current_ua`` (itself under the 1000 uA code ceiling).
"""

from __future__ import annotations

from hw.config import Limits


class LevelError(ValueError):
    pass


def level_to_ua(level: int, limits: Limits, cap_level: int | None = None) -> float:
    """Microamps for ``level`` (1..level_count, and at most ``cap_level`` when given)."""
    if not isinstance(level, int) or isinstance(level, bool):
        raise LevelError(f"level must be a whole number, not {level!r}")
    top = limits.level_count if cap_level is None else min(cap_level, limits.level_count)
    if not 1 <= level <= top:
        raise LevelError(f"level must be 1..{top}, not {level}")
    span = limits.level_max_ua - limits.level_min_ua
    ua = limits.level_min_ua + span * (level - 1) / (limits.level_count - 1)
    return min(ua, limits.max_current_ua)
