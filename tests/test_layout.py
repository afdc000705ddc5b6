"""The layout's rules, read from the source (issue 7): every module imports alone (no import
circle that only works in one order), hw/ never imports kiosk/, the kiosk reaches hw/ only through
its client and its config reader, and no module outgrows one concern (about 400 lines)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# "About 400 lines": four modules are 439-489 today (the loop's state and tick, the daemon's wiring,
# the treatment engine, the simulated plant; docs/architecture.md says why each); past 500 a module
# does more than one thing.
MAX_LINES = 500

# What the kiosk may use of hw/: the socket client (intents, replies) and the config reader (the
# ui section). Nothing that touches the board, the loop or the safety chain.
KIOSK_MAY_IMPORT = {"hw.config", "hw.service.client"}


def _modules(package: str) -> list[str]:
    names = []
    for p in sorted((ROOT / package).rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__main__":
            continue  # runs its command when imported
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_every_hw_module_imports_alone_in_a_fresh_interpreter():
    def try_import(name: str) -> tuple[str, str]:
        r = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return name, "" if r.returncode == 0 else r.stderr.strip().splitlines()[-1]

    names = _modules("hw")
    assert "hw.control.loop" in names and "hw.safety.guard" in names
    with ThreadPoolExecutor(4) as pool:
        failed = {n: err for n, err in pool.map(try_import, names) if err}
    assert not failed, failed


def test_hw_never_imports_the_kiosk():
    bad = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] == "kiosk")
        for p in (ROOT / "hw").rglob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_the_kiosk_reaches_hw_only_through_its_client_and_the_config_reader():
    used = {}
    for p in (ROOT / "kiosk").rglob("*.py"):
        mods = {m for m in _imports(p) if m.split(".")[0] == "hw"}
        # "from hw.config import load_config" also yields "hw.config.load_config": judge modules.
        outside = {
            m for m in mods if not any(m == a or m.startswith(a + ".") for a in KIOSK_MAY_IMPORT)
        }
        if outside:
            used[str(p.relative_to(ROOT))] = sorted(outside)
    assert not used, used


@pytest.mark.parametrize("package", ["hw", "kiosk"])
def test_no_module_outgrows_one_concern(package):
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / package).rglob("*.py")
    }
    assert sizes  # the package is there
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}
