"""A process's liveness as a file: the Unix time until which it counts as alive, renewed while it works.

A container healthcheck runs every few seconds in a fresh interpreter, so it must not import what the
process it checks imports (the watchdog's health as ``python -m monitoring.watchdog --healthy`` imported
Prefect: ~2.0 s of CPU every 5 s). The process writes the deadline after each unit of work it counts as
proof of life; the check (``python -m infra.healthcheck --alive FILE``) reads one number, stdlib only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def renew(path: Path, alive_for_s: float, now: float | None = None) -> None:
    """Write (atomically) that the process is alive for ``alive_for_s`` more seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    until = (now if now is not None else time.time()) + alive_for_s
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{until:.3f}\n")
    tmp.replace(path)


def alive(path: Path, now: float | None = None) -> bool:
    """Whether the deadline in ``path`` has not passed; False when the file is missing or unreadable."""
    try:
        until = float(path.read_text().strip())
    except (OSError, ValueError):
        return False
    return (now if now is not None else time.time()) <= until
