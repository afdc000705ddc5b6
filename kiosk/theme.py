"""Colours and sizes (shared kiosk-style notes): dark calm background, one accent for the next
step, red only for STOP and faults, amber for attention. Contrast of each text pair >= 4.5:1."""

from __future__ import annotations

BG = (0.07, 0.09, 0.12, 1)  # #12171F
PANEL = (0.13, 0.16, 0.21, 1)  # cards
PANEL_EDGE = (0.36, 0.42, 0.50, 1)  # 3:1 edge against BG
TEXT = (0.95, 0.96, 0.97, 1)
TEXT_DIM = (0.72, 0.76, 0.82, 1)  # ~8:1 on BG
ACCENT = (0.18, 0.77, 0.71, 1)  # teal: the next step (dark text on it, ~9:1)
ON_ACCENT = (0.03, 0.10, 0.10, 1)
STOP_RED = (0.78, 0.12, 0.16, 1)  # white text on it ~6:1
AMBER = (0.96, 0.66, 0.26, 1)  # dark text on it
ON_AMBER = (0.10, 0.06, 0.0, 1)
GOOD = (0.35, 0.80, 0.45, 1)
SKIN = (0.30, 0.34, 0.40, 1)  # the face drawing's lines

# Sizes in dp/sp (the 7" panel is ~5.2 px/mm at density 1).
TARGET_DP = 56  # >= 52 px touch targets
BIG_TARGET_DP = 88  # STOP and the level -/+ (>= 80 px)
BODY_SP = 22  # >= 20 px body text
TITLE_SP = 32
DIGITS_SP = 72  # level and countdowns (>= 64 px)
