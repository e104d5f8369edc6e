"""Whether a process a test started is still running, as tests that kill processes need to know."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """A process holds ``pid`` and has not exited. A zombie (exited, not yet reaped by its parent, which
    for an orphan is init, not the test) counts as gone, unlike ``adapters.processes.alive``."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
