"""The stack module starts processes with PID files, reuses them, and stops exactly what it started."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from adapters.processes import alive
from embedded import stack
from embedded.receiver import make_server
from reggaeton.settings import Settings


def _receiver_settings(tmp_path: Path, port: int) -> Settings:
    return Settings(state_dir=tmp_path / "state", prefect={"alert_receiver_port": port})


def test_up_reuse_down_by_pid(tmp_path: Path, free_port: Callable[[], int]) -> None:
    settings = _receiver_settings(tmp_path, free_port())
    try:
        assert stack.up(settings, ["receiver"]) == {"receiver": "started"}
        record = stack.read_record(settings, "receiver")
        assert record is not None and record.is_running()
        assert httpx.get(f"{stack.receiver_url(settings)}/health").status_code == 200
        assert (settings.state_path / "logs" / "receiver.log").is_file()

        # A second start reuses the same process.
        assert stack.up(settings, ["receiver"]) == {"receiver": "reused"}
        again = stack.read_record(settings, "receiver")
        assert again is not None and again.pid == record.pid
        assert stack.status(settings)["receiver"] == f"running (pid {record.pid})"
    finally:
        outcome = stack.down(settings, ["receiver"])
    assert outcome == {"receiver": "stopped"}
    assert not record.is_running()
    assert stack.read_record(settings, "receiver") is None
    assert stack.down(settings, ["receiver"]) == {"receiver": "not running"}


def test_down_leaves_processes_it_did_not_start(tmp_path: Path, free_port: Callable[[], int]) -> None:
    port = free_port()
    settings = _receiver_settings(tmp_path, port)
    server = make_server(tmp_path / "alerts.jsonl", port=port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert stack.up(settings, ["receiver"]) == {"receiver": "external"}
        assert stack.down(settings, ["receiver"]) == {"receiver": "not running"}
        assert httpx.get(f"{stack.receiver_url(settings)}/health").status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_stale_pid_file_is_not_trusted(tmp_path: Path, free_port: Callable[[], int]) -> None:
    """A PID file whose process is gone (or whose PID was recycled) is neither reused nor killed."""
    settings = _receiver_settings(tmp_path, free_port())
    stale = stack.Record("receiver", os.getpid(), "not-my-start-time", ["python"])
    stack._write_record(settings, stale)
    assert not stale.is_running()
    assert stack.down(settings, ["receiver"]) == {"receiver": "not running"}
    assert stack.read_record(settings, "receiver") is None


def test_stack_environment_points_every_part_at_one_state_and_servers(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    env = stack.stack_environment(settings)
    assert env["REGGAETON_STATE_DIR"] == str(settings.state_path)
    assert env["REGGAETON_MLFLOW__TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["NML_DISABLE_USAGE_LOGGING"] == "1"


def test_settings_round_trip_through_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child process rebuilds exactly the parent's settings from the environment the stack gives it."""
    settings = Settings(
        state_dir=tmp_path / "state",
        serving={"port": 18000, "admin_token": "s3cret"},
        training={"n_trials": 3, "families": ("logistic_regression",)},
        prefect={"alert_receiver_port": 18765, "work_pool": "other-pool"},
        # A list of models: declared slices reach the worker's flow runs (the gate) as JSON.
        promotion={"slices": [{"name": "fast", "where": "tempo >= 130", "window_days": 7}]},
    )
    for key in [k for k in os.environ if k.startswith("REGGAETON_")]:
        monkeypatch.delenv(key)
    for key, value in stack.settings_environment(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_services_of_a_phase_are_stopped_together_within_one_grace(tmp_path: Path) -> None:
    """Two services that ignore SIGTERM: both killed after one grace, not one grace each."""
    settings = Settings(state_dir=tmp_path / "state")
    # An exit of its own would print "bye" (atexit); SIGKILL runs no handler, so its output ends at "up".
    stubborn = (
        "import atexit, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "atexit.register(lambda: print('bye', flush=True)); print('up', flush=True); "
    )
    processes = []
    for name in ("api", "watchdog"):
        command = [sys.executable, "-c", stubborn + "time.sleep(600)"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
        assert process.stdout is not None and process.stdout.readline() == b"up\n"  # its handler is set
        record = stack.Record(name, process.pid, stack._start_ticks(process.pid), ["python"])
        stack._write_record(settings, record)
        processes.append(process)
    began = time.monotonic()
    outcome = stack.stop_together(["api", "watchdog"], settings, timeout_s=3.0)
    took = time.monotonic() - began
    assert outcome == {"api": "stopped", "watchdog": "stopped"}
    # stop_together reaps the processes it stopped (they are this process's children here), so
    # Popen.wait may find no status left to read (it then says 0): what each printed tells how it ended.
    for process in processes:
        process.wait(timeout=10)
        assert process.stdout is not None and process.stdout.read() == b"", "exited by itself"
        assert not alive(process.pid)
    assert 3.0 <= took < 6.0, took  # one grace of 3 s, not two
    assert stack.read_record(settings, "api") is None and stack.read_record(settings, "watchdog") is None


def test_a_dead_workers_pid_now_held_by_another_process_is_never_signalled(tmp_path: Path) -> None:
    """The worker died and its PID went to another process leading a group of its own (PIDs cycle within
    minutes on a busy machine; a container's worker is such a process): stopping the worker leaves it be."""
    settings = Settings(state_dir=tmp_path / "state")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        ticks = stack._start_ticks(other.pid)
        assert ticks is not None
        # The record of a worker that had this PID before: another start time.
        stack._write_record(settings, stack.Record("worker", other.pid, str(int(ticks) - 1), ["prefect"]))
        assert stack.stop("worker", settings, timeout_s=1.0) == "not running"
        assert other.poll() is None, "the other process was signalled"
    finally:
        other.kill()
        other.wait()


def test_a_server_the_settings_point_at_is_used_as_it_is(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """Not an MLflow server by its answers, but the user named it (MLFLOW_TRACKING_URI): theirs to choose."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = Settings(state_dir=tmp_path / "state", mlflow={"port": port})
        with pytest.raises(stack.PortHeld, match=f"port {port} \\(mlflow\\) is held by another program"):
            stack.up(settings, ["mlflow"])
        assert stack.up(settings, ["mlflow"], chosen={"mlflow"}) == {"mlflow": "external"}
        assert stack.read_record(settings, "mlflow") is None
    finally:
        server.shutdown()
        server.server_close()
