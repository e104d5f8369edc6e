"""The worker container's process (infra/worker.py): how it stops, with real child processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from process_support import running

from infra import worker

# A stand-in worker: it writes its flow run's PID, the flow run ignores SIGTERM, the worker exits on it.
WORKER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0) if sys.argv[2] == "exit" else None)
time.sleep(600)
"""


def _start(tmp_path: Path, on_sigterm: str) -> tuple[subprocess.Popen[bytes], int]:
    pid_file = tmp_path / "flow-run.pid"
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(pid_file), on_sigterm], start_new_session=True
    )
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, int(pid_file.read_text())


def _gone_soon(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def test_a_worker_that_outlives_its_grace_is_killed_with_its_flow_runs(tmp_path: Path) -> None:
    child, flow_run = _start(tmp_path, on_sigterm="ignore")
    began = time.monotonic()
    worker.stop_workers([child], grace_s=1.0)
    assert 1.0 <= time.monotonic() - began < 10
    assert child.returncode == -9
    assert _gone_soon(flow_run)


def test_a_worker_that_stops_in_time_is_not_killed(tmp_path: Path) -> None:
    child, flow_run = _start(tmp_path, on_sigterm="exit")
    # Its flow run still runs (ignoring SIGTERM, as one finishing its work): the grace waits for it too.
    began = time.monotonic()
    worker.stop_workers([child], grace_s=1.5)
    assert child.returncode == 0  # the worker itself got SIGTERM and exited on it
    assert time.monotonic() - began >= 1.5  # then its flow run had the rest of the grace
    assert _gone_soon(flow_run)


def test_the_command_names_the_worker_and_serves_its_healthcheck() -> None:
    command = worker.worker_command("reggaeton-pool", "host-1")
    assert command[1:5] == ["-m", "prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == "reggaeton-pool"
    assert command[command.index("--name") + 1] == "host-1"
    assert "--with-healthcheck" in command and "process" in command


def test_the_tuning_worker_takes_one_run_at_a_time_and_leaves_the_healthcheck_to_the_main_one() -> None:
    command = worker.worker_command(
        "reggaeton-tuning", worker.tuning_worker_name("host-1"), healthcheck=False, limit=1
    )
    assert command[command.index("--pool") + 1] == "reggaeton-tuning"
    assert command[command.index("--name") + 1] == "host-1-tuning"
    assert command[command.index("--limit") + 1] == "1"
    assert "--with-healthcheck" not in command


def _stand_in(tmp_path: Path, name: str, on_sigterm: str, exit_after_s: float = 600) -> list[str]:
    """A stand-in worker writing its flow run's PID to ``<name>.pid``; it may exit by itself."""
    body = WORKER.replace("time.sleep(600)\n", f"time.sleep({exit_after_s}); sys.exit(3)\n")
    return [sys.executable, "-c", body, str(tmp_path / f"{name}.pid"), on_sigterm]


def _flow_run(tmp_path: Path, name: str) -> int:
    pid_file = tmp_path / f"{name}.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(pid_file.read_text())


def test_a_stop_signal_stops_both_workers_and_kills_the_one_that_outlives_the_grace(tmp_path: Path) -> None:
    commands = [_stand_in(tmp_path, "main", "exit"), _stand_in(tmp_path, "tuning", "ignore")]
    stopping: list[int] = []
    threading.Timer(2.0, stopping.append, args=[15]).start()
    began = time.monotonic()
    assert worker.run_workers(commands, 1.0, stopping) == 0
    assert 3.0 <= time.monotonic() - began < 15
    assert _gone_soon(_flow_run(tmp_path, "main")) and _gone_soon(_flow_run(tmp_path, "tuning"))


def test_when_one_worker_exits_the_other_is_stopped_and_its_code_returned(tmp_path: Path) -> None:
    commands = [_stand_in(tmp_path, "main", "exit"), _stand_in(tmp_path, "tuning", "exit", exit_after_s=2)]
    began = time.monotonic()
    assert worker.run_workers(commands, 1.0, []) == 3
    assert time.monotonic() - began < 15
    assert _gone_soon(_flow_run(tmp_path, "main")) and _gone_soon(_flow_run(tmp_path, "tuning"))
