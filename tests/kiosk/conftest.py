"""Kiosk tests: Kivy must not parse pytest's argv, log to the console or write to ~/.kivy."""

from __future__ import annotations

import os
import tempfile

# Before any kivy import (conftest is imported first). A fresh Kivy home per session.
os.environ["KIVY_NO_ARGS"] = "1"
os.environ["KIVY_NO_CONSOLELOG"] = "1"
os.environ["KIVY_NO_FILELOG"] = "1"
os.environ.setdefault("KIVY_HOME", tempfile.mkdtemp(prefix="kivy-home-"))
