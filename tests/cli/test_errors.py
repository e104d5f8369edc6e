"""The console script: help on each command; usage errors and a stack that is down: one line, no traceback."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli.main import build_parser, main

REGGAETON = Path(sys.executable).with_name("reggaeton")
COMMANDS: tuple[str, ...] = ("up", "down", "status", "demo", "deploy", "train", "gate", "promote", "rollback")
COMMANDS += ("monitor", "retrain")
COMMANDS += ("simulate", "alerts", "score")


def _run(args: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REGGAETON_", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"))
    }
    env.update({"REGGAETON_STATE_DIR": str(tmp_path / "state"), **extra})
    return subprocess.run(
        [str(REGGAETON), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    registered = set(commands.choices)
    assert registered >= set(COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        assert f"usage: reggaeton {command}" in capsys.readouterr().out


def test_the_help_shows_every_command_with_an_example_and_every_service_of_the_stack(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from embedded.stack import SERVICE_NAMES

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    examples = text[text.index("examples:") :]
    for command in commands.choices:
        assert f"  reggaeton {command}" in examples, command
    assert all(service in examples for service in SERVICE_NAMES), examples
    for command in ("up", "down"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        usage = " ".join(capsys.readouterr().out.split())
        assert f"any of {', '.join(SERVICE_NAMES)} (default: all)" in usage, usage


def test_unknown_command_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(_run(["promot", "--version", "2"], tmp_path))
    assert line.startswith("reggaeton: error: argument command: invalid choice: 'promot'")


def test_missing_argument_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(_run(["promote", "--version", "2"], tmp_path))
    assert "--reason" in line


def test_a_stack_that_is_down_is_one_line_naming_the_url(tmp_path: Path, free_port: int) -> None:
    """Nothing listens on the port the recorded stack (or the standard variable) names."""
    url = f"http://127.0.0.1:{free_port}"
    result = _run(["promote", "--version", "2", "--reason", "x"], tmp_path, MLFLOW_TRACKING_URI=url)
    assert _one_line_error(result) == (
        f"reggaeton promote: cannot reach mlflow at {url} (from MLFLOW_TRACKING_URI): "
        "start the local stack with `reggaeton up`"
    )
    for command in ("monitor", "retrain", "live-gate"):  # deployment runs: each reads the registry
        result = _run([command], tmp_path, MLFLOW_TRACKING_URI=url)
        assert _one_line_error(result).startswith(f"reggaeton {command}: cannot reach mlflow at {url} ")
    result = _run(["simulate", "--count", "10"], tmp_path, REGGAETON_SERVING__PORT=str(free_port))
    assert f"cannot reach api at {url}" in _one_line_error(result)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_up_refuses_a_port_another_program_holds_and_starts_nothing(tmp_path: Path) -> None:
    """macOS's AirPlay receiver holds port 5000: `up` must not take it for MLflow."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    held = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    prefect_port, receiver_port, api_port = _free_ports(3)
    ports = {
        "REGGAETON_MLFLOW__PORT": str(held),
        "REGGAETON_PREFECT__PORT": str(prefect_port),
        "REGGAETON_PREFECT__ALERT_RECEIVER_PORT": str(receiver_port),
        "REGGAETON_SERVING__PORT": str(api_port),
    }
    try:
        result = _run(["up"], tmp_path, **ports)
    finally:
        server.shutdown()
        server.server_close()
    if result.returncode == 0:  # it started a stack after all: stop it before failing
        _run(["down"], tmp_path, **ports)
    line = _one_line_error(result)
    url = f"http://127.0.0.1:{held}/health"
    assert line.startswith(f"reggaeton up: port {held} (mlflow) is held by another program, HTTP 404"), line
    assert "SimpleHTTP" in line and url in line, line
    assert line.endswith("give the mlflow another port: REGGAETON_MLFLOW__PORT=<free port>"), line
    assert not (tmp_path / "state" / "pids").exists() or not any((tmp_path / "state" / "pids").iterdir())


def test_down_answers_without_importing_mlflow_prefect_or_scipy(tmp_path: Path) -> None:
    """Stopping the stack reads PID files: it does not pay seconds of imports (only a stopped worker's
    hand-back talks to Prefect)."""
    heavy = ("mlflow", "prefect", "scipy", "sklearn")
    script = (
        "import sys; from cli.main import main; code = main(['down']); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(code)"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("REGGAETON_")}
    env["REGGAETON_STATE_DIR"] = str(tmp_path / "state")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
