"""``service_info``: what the kiosk's PIN-locked service area shows, read-only.

The last self-test with every step's figures, the limits in force with the file each came from
(the defaults, the board file or the site file: ``Config.source_of``), and the versions. Nothing
here changes anything; it is answered on the service thread from what is already in memory.
"""

from __future__ import annotations

import platform
from importlib import metadata

from hw.config import SOURCED_SECTIONS
from hw.service import protocol as P


def _version() -> str:
    try:
        return metadata.version("microcurrent-kiosk")
    except metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


def service_info(d) -> dict:
    """``d`` is the hw.service.daemon.Daemon (either backend: the loop here or its proxy)."""
    cfg, loop = d.cfg, d.loop
    pr = loop.post_result
    post = None
    if pr is not None:
        post = {
            "passed": bool(pr.get("passed")),
            "failed_step": pr.get("failed_step"),
            "reason": pr.get("reason", ""),
            "steps": [dict(s) for s in pr.get("steps", ())],
        }
    limits = []
    for section in SOURCED_SECTIONS:
        values = getattr(cfg, section).model_dump(mode="json")
        for name, value in values.items():
            key = f"{section}.{name}"
            limits.append({"key": key, "value": value, "file": cfg.source_of(key)})
    rt = d.rt
    return {
        "post": post,
        "post_valid": bool(loop.guard.post_valid),
        "limits": limits,
        "versions": {
            "hw": _version(),
            "protocol": P.PROTOCOL_VERSION,
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
        },
        "realtime": {
            "process": "separate" if rt is not None else "in the service (tests)",
            "pid": rt.rt_pid if rt is not None else None,
            "scheduling": (rt.sched_note if rt is not None else d.runner.sched_note) or "",
        },
        "sim": d.board.sim is not None,
    }
