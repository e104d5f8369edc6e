"""What the stacks' supervisors check before signalling a recorded process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from adapters.processes import alive, group_alive, orphans_alive


def test_a_dead_leaders_group_is_its_own_while_its_orphans_run_and_never_once_its_pid_is_taken() -> None:
    # A leader that leaves a child in its group and exits: the child is an orphan of that group.
    script = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    leader.wait(timeout=30)
    try:
        assert not alive(leader.pid) and group_alive(leader.pid)
        assert orphans_alive(leader.pid)
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_alive(leader.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not orphans_alive(leader.pid)

    # A PID another process holds, leading a group of its own (a recycled PID): never an orphan group.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert group_alive(other.pid) and not orphans_alive(other.pid)
    finally:
        other.kill()
        other.wait()
