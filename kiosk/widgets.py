"""Reusable widgets: buttons, the hold-to-confirm button, the face diagram, the live trace, the
contact meter, the electrode drawing and a layer that only catches touches while shown."""

from __future__ import annotations

import os

from kivy.clock import Clock
from kivy.graphics import Color, Ellipse, Line, Rectangle, RoundedRectangle
from kivy.lang import Builder
from kivy.properties import (
    BooleanProperty,
    ColorProperty,
    ListProperty,
    NumericProperty,
    StringProperty,
)
from kivy.uix.button import Button
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.widget import Widget

from kiosk import theme

Builder.load_file(os.path.join(os.path.dirname(__file__), "widgets.kv"))


def change(w, name: str, value) -> None:
    """Set a property only when it really changes. A colour given as a tuple counts as a change
    against the list Kivy stores, and a text colour that changes re-renders the label's texture:
    recolouring every button on every answer cost 2-3 s of software-GL time per tap."""
    old = getattr(w, name)
    if (list(old) if isinstance(old, list | tuple) else old) != (
        list(value) if isinstance(value, list | tuple) else value
    ):
        setattr(w, name, value)


class KButton(Button):
    """A flat rounded button; darker while pressed (the tap answers within one frame)."""

    fill = ColorProperty(theme.PANEL)
    ink = ColorProperty(theme.TEXT)
    edge = ColorProperty(theme.PANEL_EDGE)


class HoldButton(KButton):
    """Fires ``on_held`` only after being held ``hold_s``; a fill shows the progress."""

    hold_s = NumericProperty(1.5)
    progress = NumericProperty(0.0)  # 0..1
    __events__ = ("on_held",)

    def on_held(self):
        pass

    def on_press(self):
        self.progress = 0.0
        self._ev = Clock.schedule_interval(self._grow, 1 / 30)

    def _grow(self, dt):
        self.progress = min(1.0, self.progress + dt / self.hold_s)
        if self.progress >= 1.0:
            self._ev.cancel()
            self.dispatch("on_held")

    def on_release(self):
        ev = getattr(self, "_ev", None)
        if ev is not None:
            ev.cancel()
        self.progress = 0.0


# Zones as ellipses on a unit face (x, y, w, h in face-box fractions), lit one at a time.
ZONE_SHAPES = {
    "forehead": [(0.28, 0.70, 0.44, 0.14)],
    "brows": [(0.26, 0.60, 0.19, 0.06), (0.55, 0.60, 0.19, 0.06)],
    "cheeks": [(0.18, 0.36, 0.22, 0.16), (0.60, 0.36, 0.22, 0.16)],
    "jawline": [(0.22, 0.17, 0.20, 0.09), (0.58, 0.17, 0.20, 0.09)],
    "neck": [(0.36, 0.00, 0.28, 0.09)],
}


class FaceDiagram(Widget):
    """A drawn face (no photo) with the current zone lit; ``pulse`` (0..1) brightens it for a
    relocate cue."""

    zone = StringProperty("")
    pulse = NumericProperty(0.0)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.bind(pos=self.redraw, size=self.redraw, zone=self.redraw, pulse=self.redraw)

    def flash(self):
        self.pulse = 1.0
        Clock.schedule_once(lambda _dt: setattr(self, "pulse", 0.0), 0.35)

    def box(self):
        side = min(self.width / 0.8, self.height)
        w, h = side * 0.8, side
        return self.center_x - w / 2, self.center_y - h / 2, w, h

    def redraw(self, *_):
        x, y, w, h = self.box()
        self.canvas.clear()
        with self.canvas:
            for zone, shapes in ZONE_SHAPES.items():
                lit = zone == self.zone
                for zx, zy, zw, zh in shapes:
                    if lit:
                        a = 0.75 + 0.25 * self.pulse
                        Color(theme.ACCENT[0], theme.ACCENT[1], theme.ACCENT[2], a)
                        Ellipse(pos=(x + zx * w, y + zy * h), size=(zw * w, zh * h))
                    else:
                        Color(*theme.PANEL_EDGE)
                        Line(ellipse=(x + zx * w, y + zy * h, zw * w, zh * h), width=1)
            Color(*theme.TEXT_DIM)
            # head, eyes, nose, mouth, neck
            Line(ellipse=(x + 0.12 * w, y + 0.10 * h, 0.76 * w, 0.86 * h), width=2)
            Line(ellipse=(x + 0.31 * w, y + 0.52 * h, 0.12 * w, 0.05 * h), width=1.5)
            Line(ellipse=(x + 0.57 * w, y + 0.52 * h, 0.12 * w, 0.05 * h), width=1.5)
            Line(
                points=[
                    x + 0.5 * w,
                    y + 0.50 * h,
                    x + 0.46 * w,
                    y + 0.38 * h,
                    x + 0.53 * w,
                    y + 0.37 * h,
                ],
                width=1.5,
            )
            Line(
                bezier=[
                    x + 0.40 * w,
                    y + 0.28 * h,
                    x + 0.5 * w,
                    y + 0.24 * h,
                    x + 0.60 * w,
                    y + 0.28 * h,
                ],
                width=1.5,
            )
            Line(points=[x + 0.38 * w, y + 0.14 * h, x + 0.38 * w, y], width=2)
            Line(points=[x + 0.62 * w, y + 0.14 * h, x + 0.62 * w, y], width=2)


class Digits(Widget):
    """Big digits (countdowns, the level) drawn from one cached texture per glyph.

    A Label re-renders its whole texture with SDL_ttf on every change: for 72-80 sp digits that
    was the longest work of a treatment frame (a countdown changes every second), and a long
    frame delays the lease renewal. Here each glyph is rendered once per size and a change only
    swaps rectangles. Digits sit in cells of equal width (tabular), so a countdown does not
    jitter; the texture is white and ``color`` tints it, as in a Label."""

    text = StringProperty("")
    font_size = NumericProperty(72)
    bold = BooleanProperty(False)
    color = ColorProperty(theme.TEXT)
    _glyphs: dict = {}  # (char, font_size px, bold) -> texture, shared by every Digits

    def __init__(self, **kw):
        super().__init__(**kw)
        self.bind(pos=self.redraw, size=self.redraw, text=self.redraw, color=self.redraw)
        self.bind(font_size=self.redraw, bold=self.redraw)

    @classmethod
    def prewarm(cls, font_sizes: tuple, chars: str = "0123456789:–-") -> None:
        """Render the glyphs now (start-up), not in the first frame of a treatment."""
        for size in font_sizes:
            for bold in (False, True):
                probe = cls(font_size=size, bold=bold)
                for ch in chars:
                    probe.glyph(ch)

    def glyph(self, ch: str):
        key = (ch, round(self.font_size), self.bold)
        tex = Digits._glyphs.get(key)
        if tex is None:
            from kivy.core.text import Label as CoreLabel

            core = CoreLabel(text=ch, font_size=self.font_size, bold=self.bold)
            core.refresh()
            tex = Digits._glyphs[key] = core.texture
        return tex

    def redraw(self, *_):
        cell = self.glyph("0").width  # every digit gets the widest digit's cell
        texs = [self.glyph(c) for c in self.text]
        widths = [cell if c.isdigit() else t.width for c, t in zip(self.text, texs, strict=True)]
        x = self.center_x - sum(widths) / 2
        self.canvas.clear()
        with self.canvas:
            Color(*self.color)
            for t, w in zip(texs, widths, strict=True):
                pos = (x + (w - t.width) / 2, self.center_y - t.height / 2)
                Rectangle(texture=t, pos=pos, size=t.size)
                x += w


class Trace(Widget):
    """The measured current over the last seconds: one Line whose points are replaced."""

    values = ListProperty([])
    max_ua = NumericProperty(50.0)
    points_n = NumericProperty(100)

    def __init__(self, **kw):
        super().__init__(**kw)
        with self.canvas:
            Color(*theme.PANEL)
            self._bg = Rectangle()
            Color(*theme.ACCENT)
            self._line = Line(points=[], width=1.6)
        self.bind(pos=self.redraw, size=self.redraw, values=self.redraw)

    def redraw(self, *_):
        self._bg.pos, self._bg.size = self.pos, self.size
        vals = self.values
        top = max(self.max_ua, max(vals) * 1.15 if vals else 0.0)
        step = self.width / max(1, self.points_n - 1)
        x0 = self.right - step * (len(vals) - 1) if vals else self.x
        pts = []
        for i, v in enumerate(vals):
            pts += [x0 + i * step, self.y + 4 + (self.height - 8) * min(1.0, v / top)]
        self._line.points = pts


class ContactMeter(Widget):
    """A bar from the daemon's contact quality (%); the word beside it carries the meaning too."""

    pct = NumericProperty(0.0)
    band = StringProperty("none")

    def __init__(self, **kw):
        super().__init__(**kw)
        self.bind(pos=self.redraw, size=self.redraw, pct=self.redraw, band=self.redraw)

    def redraw(self, *_):
        colour = {"good": theme.GOOD, "fair": theme.AMBER, "dry": theme.AMBER}.get(
            self.band, theme.PANEL_EDGE
        )
        self.canvas.clear()
        with self.canvas:
            Color(*theme.PANEL)
            RoundedRectangle(pos=self.pos, size=self.size, radius=[self.height / 2])
            Color(*colour)
            w = max(self.height, self.width * max(0.0, min(1.0, self.pct / 100.0)))
            if self.band != "none":
                RoundedRectangle(pos=self.pos, size=(w, self.height), radius=[self.height / 2])
            Color(*theme.PANEL_EDGE)
            Line(
                rounded_rectangle=(self.x, self.y, self.width, self.height, self.height / 2),
                width=1,
            )


class HoldingDrawing(Widget):
    """How to hold the electrodes: a hand-held wand with two spheres against a cheek."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.bind(pos=self.redraw, size=self.redraw)

    def redraw(self, *_):
        s = min(self.width, self.height)
        x, y = self.center_x - s / 2, self.center_y - s / 2
        self.canvas.clear()
        with self.canvas:
            Color(*theme.TEXT_DIM)  # cheek profile
            Line(
                bezier=[
                    x + 0.15 * s,
                    y + 0.95 * s,
                    x + 0.45 * s,
                    y + 0.75 * s,
                    x + 0.40 * s,
                    y + 0.30 * s,
                    x + 0.20 * s,
                    y + 0.05 * s,
                ],
                width=2,
            )
            Color(*theme.ACCENT)  # two spheres touching the skin
            for cy in (0.62, 0.44):
                Ellipse(pos=(x + 0.40 * s, y + cy * s), size=(0.13 * s, 0.13 * s))
            Color(*theme.PANEL_EDGE)  # the handle, held in the palm
            Line(points=[x + 0.53 * s, y + 0.56 * s, x + 0.85 * s, y + 0.25 * s], width=6)
            Color(*theme.TEXT_DIM)
            Line(ellipse=(x + 0.70 * s, y + 0.18 * s, 0.22 * s, 0.18 * s), width=2)


class Dot(Widget):
    """One day of the streak calendar: a filled dot (treated) or a ring."""

    lit = BooleanProperty(False)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.bind(pos=self.redraw, size=self.redraw, lit=self.redraw)

    def redraw(self, *_):
        d = min(self.width, self.height) * 0.6
        x, y = self.center_x - d / 2, self.center_y - d / 2
        self.canvas.clear()
        with self.canvas:
            Color(*(theme.ACCENT if self.lit else theme.PANEL_EDGE))
            if self.lit:
                Ellipse(pos=(x, y), size=(d, d))
            else:
                Line(ellipse=(x, y, d, d), width=1.5)  # 1 px GL lines came out dashed


class Layer(FloatLayout):
    """Covers what is below while ``shown``; invisible and transparent to touches otherwise."""

    shown = BooleanProperty(False)
    __events__ = ("on_tapped",)

    def on_kv_post(self, _base):
        self._hidden_children: list = []
        self.on_shown(self, self.shown)

    def on_shown(self, _w, shown: bool) -> None:
        # Kivy draws a widget of opacity 0 all the same (blended to nothing): the two hidden
        # full-screen layers cost ~6 of ~21 ms of software-GL CPU per frame. Hidden, a layer
        # holds no children and its cover (app.kv) has no size.
        if not hasattr(self, "_hidden_children"):
            return  # before on_kv_post: its children are not all added yet
        if shown and self._hidden_children:
            for w in reversed(self._hidden_children):
                self.add_widget(w)
            self._hidden_children = []
        elif not shown and self.children:
            self._hidden_children = list(self.children)
            self.clear_widgets()

    def on_tapped(self):
        pass

    def on_touch_down(self, touch):
        if not self.shown:
            return False
        super().on_touch_down(touch)
        # After the children, so that a handler hiding the layer cannot let this touch through.
        self.dispatch("on_tapped")
        return True  # nothing below gets it

    def on_touch_move(self, touch):
        return self.shown and (super().on_touch_move(touch) or True)

    def on_touch_up(self, touch):
        return self.shown and (super().on_touch_up(touch) or True)
