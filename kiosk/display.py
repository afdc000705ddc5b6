"""Window settings shared by the kiosk's entry points (``python -m kiosk``, the bench's kiosk,
the screenshots, the test driver), applied before Kivy creates its window.

Without a display (SDL's offscreen driver: the tests, the bench, run-sim headless) the GL is
Mesa's software rasterizer, and two of Kivy's defaults cost it dearly (measured 2026-12-02 on the
2-core development host, treatment screen at 800x480): 2x multisampling doubled its CPU per
frame (54 -> 26 ms), and the offscreen window's buffer swap does nothing, so frames were binned
without being rendered until the next texture write or readback rendered a scene's worth of
them (0.1-5 s in one call on the UI thread: past the lease). A real display keeps Kivy's
defaults: its swap renders each frame, and a GPU multisamples cheaply.
"""

from __future__ import annotations

import os


def offscreen() -> bool:
    """SDL's offscreen video driver: no display, software GL."""
    return os.environ.get("SDL_VIDEODRIVER") == "offscreen"


def headless_defaults() -> None:
    """A child kiosk process (the bench, the screenshots): Kivy leaves its argv and console
    alone, keeps its files in a fresh temporary home, and without a display renders offscreen."""
    import tempfile

    os.environ.setdefault("KIVY_NO_ARGS", "1")
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    if "KIVY_HOME" not in os.environ:
        os.environ["KIVY_HOME"] = tempfile.mkdtemp(prefix="kivy-home-")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")


def configure_window(width_px: int, height_px: int) -> None:
    """A ``width_px`` x ``height_px`` window, Escape does not exit. Before the window exists."""
    from kivy.config import Config

    Config.set("graphics", "width", str(width_px))
    Config.set("graphics", "height", str(height_px))
    Config.set("kivy", "exit_on_escape", "0")
    if offscreen():
        Config.set("graphics", "multisamples", "0")


def render_each_frame(window) -> None:
    """Offscreen only: finish each frame's GL when it is flipped, as a display's swap would, so
    no backlog of unrendered frames builds up for a later texture write to wait for."""
    if not offscreen():
        return
    from kivy.graphics.opengl import glFinish

    window.bind(on_flip=lambda *_: glFinish())
