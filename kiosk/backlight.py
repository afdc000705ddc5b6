"""The display's backlight (a kiosk preference: the screen is the kiosk's, not the daemon's).

Linux exposes a dimmable panel as ``/sys/class/backlight/NAME/{brightness,max_brightness}`` (the
official Raspberry Pi 7" panel: ``rpi_backlight`` or ``10-0045``). A desktop or an HDMI screen
has none: then ``Backlight.find()`` returns None and the settings screen shows no brightness.
Nothing is read or written at import; ``root`` is injectable for tests.
"""

from __future__ import annotations

from pathlib import Path

SYSFS = Path("/sys/class/backlight")
MIN_PCT = 10  # never fully dark by a setting: a black screen looks like a dead device


class Backlight:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.max = int((self.path / "max_brightness").read_text().strip())

    @classmethod
    def find(cls, root: Path = SYSFS) -> Backlight | None:
        """The first dimmable backlight under ``root``, or None (none, or unreadable)."""
        try:
            for p in sorted(Path(root).iterdir()):
                try:
                    b = cls(p)
                except (OSError, ValueError):
                    continue
                if b.max > 0:
                    return b
        except OSError:
            pass
        return None

    def get_pct(self) -> int:
        raw = int((self.path / "brightness").read_text().strip())
        return round(100 * raw / self.max)

    def set_pct(self, pct: float) -> int:
        """Set the brightness (``MIN_PCT``..100 %); returns what was set. Raises OSError when
        the file cannot be written (permissions: the kiosk's user needs the ``video`` group or
        a udev rule)."""
        pct = max(MIN_PCT, min(100, round(pct)))
        (self.path / "brightness").write_text(str(round(self.max * pct / 100)))
        return pct
