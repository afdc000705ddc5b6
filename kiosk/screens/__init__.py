"""One Screen per module, each with its .kv beside it (loaded on import of the module)."""

from __future__ import annotations

import os

from kivy.lang import Builder

NAMES = (
    "startup",
    "first_use",
    "home",
    "prep",
    "contact",
    "treatment",
    "summary",
    "fault",
    "history",
    "settings",
)


def load_kv(py_file: str) -> None:
    Builder.load_file(os.path.splitext(py_file)[0] + ".kv")
