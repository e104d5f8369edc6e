"""The machine's process table, as the stacks' supervisors read it before they signal anything.

A PID names a process only while it lives: on a busy machine PIDs cycle within minutes (``pid_max`` is
often 32,768), so a recorded PID or process group may by now be another program's.
"""

from __future__ import annotations

import os
from collections.abc import Callable


def _answers(signal_zero: Callable[[int, int], None], target: int) -> bool:
    """Signal 0 to ``target`` (a PID or a group) finds something there, whoever's it is."""
    try:
        signal_zero(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid: int) -> bool:
    """A process holds this PID (ours or not; a zombie too)."""
    return _answers(os.kill, pid)


def group_alive(pgid: int) -> bool:
    """Some process is in the process group ``pgid``."""
    return _answers(os.killpg, pgid)


def orphans_alive(leader: int) -> bool:
    """Processes are left in the group a dead ``leader`` led (a worker's flow runs), and they are its.

    Linux gives a PID to a new process only once no process has it as its group: a process holding the
    leader's PID now is another one (call this once the leader is known dead or reaped), its group is not
    the leader's, and the leader's group is gone.
    """
    return not alive(leader) and group_alive(leader)
