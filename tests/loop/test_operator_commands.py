"""Every command the docs show runs against one running local stack: the docs and the commands cannot drift.

The commands are the lines of the ```bash blocks of README.md, docs/operations.md and docs/es/README.md.
Each is run as written (comments dropped, the trial count made small, the API's documented address made
the stack's) against the session's stack, in the order an operator would (up, deploy, status, train,
gate, promote, rollback, a request, traffic, monitor, alerts, down), and must exit 0. A command that
cannot run here is in ``EXCLUDED`` with the reason; a docs command neither run nor excluded fails the test.
The subprocesses get only the state folder and small training settings, not the stack's URLs: they find
the stack through what ``up`` recorded.

The README's quick start is also checked as a newcomer reads it: its `curl` answers as documented.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from docs_support import COMMAND_DOCS, bash_commands, block_commands, fenced_blocks, read, section
from mlflow import MlflowClient

from adapters import registry
from embedded import demo, stack
from reggaeton import names
from reggaeton.schema import INVALID_EXAMPLE_SONG
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# On the session's `loop_stack`, with the other module that uses it: one worker, one stack.
pytestmark = pytest.mark.xdist_group("loop_stack")

# Docs commands the test does not run, each with why (matched as a prefix of the command).
EXCLUDED: dict[str, str] = {
    "make demo": "runs the whole loop again (minutes): test_loop_e2e runs the same loop on this stack",
    "make test": "the test suite itself",
    "make bench-": "benchmarks: minutes of load, measured by hand (`make bench-*`), never in the suite",
    "cp .env.example .env": "compose set-up: writes .env into the checkout",
    ".venv/bin/python -m infra.check_secrets --new-env": "compose set-up: writes .env into the checkout",
    "docker-compose": "the compose stack: tests/infra/test_compose_stack.py brings it up (Docker)",
    ".venv/bin/reggaeton --stack compose": "needs the compose stack up (Docker), not the local one",
    "cd infra": "Pulumi: another stack (tests/infra/test_pulumi.py checks the program with Pulumi's mocks)",
    "pulumi ": "Pulumi: another stack (tests/infra/test_pulumi.py checks the program with Pulumi's mocks)",
    "export PULUMI_CONFIG_PASSPHRASE": "Pulumi: another stack (a local backend's passphrase)",
    "docker volume rm": "removes the Pulumi stack's data volumes: another stack (Docker)",
    "make install": "the suite already runs in the installed .venv (CI runs `make install` first)",
    ".venv/bin/reggaeton score": "needs catalogue files: tests/cli/test_score.py runs the command on one",
    ".venv/bin/python -c": "reads the output of the `reggaeton score` example before it",
    ".venv/bin/reggaeton demo": "the whole loop again (minutes): test_loop_e2e runs it on this stack, "
    "tests/loop/test_live_loop.py the live path",
    "REGGAETON_LIVE__POLICY=shadow": "a stack under the shadow policy: tests/loop/test_live_loop.py runs one",
    ".venv/bin/reggaeton canary": "needs a challenger under live evaluation (this stack's is offline): "
    "tests/flows/test_live_gate.py and tests/loop/test_live_loop.py start and abort canaries",
    ".venv/bin/reggaeton shadow --start": "puts a version under live evaluation: test_live_loop.py does",
    "export REGGAETON_PROMOTION__SLICES": "declares slices for the processes started after it, in the same "
    "shell: tests/reggaeton/test_split_and_slices.py reads such a JSON list from the environment",
    "rm -rf .state": "the quick start's reset deletes the checkout's state folder; each test's stack keeps "
    "its state in a tmp_path folder of its own, which pytest removes",
    "make check": "lint, types and the test suite itself (CI runs them)",
    "make docs": "serves the documentation site until stopped; CI builds it strictly (`make docs-build`)",
}
# Small enough for CI, otherwise as written.
SUBSTITUTIONS = {"--n-trials 20": "--n-trials 2"}
# Where the docs' requests go (the local stack's default API address); here, the session stack's API.
DOCUMENTED_API = "http://127.0.0.1:8000"
# The order an operator runs them in; commands of one step keep the docs' order.
ORDER: tuple[str, ...] = ("--help", "up", "deploy", "status", "train", "gate", "promote", "rollback")
ORDER += ("curl", "simulate", "monitor", "shadow", "live-gate", "alerts", "down")
# The README's quick start, line by line: what is not run by the quick start test, and why it is covered.
QUICK_START_COVERED: dict[str, str] = {
    "make demo": "its loop (deploy, first champion, stable then drifted traffic, monitor, retrain, new "
    "champion served) runs on this same stack in tests/loop/test_loop_e2e.py; its install is the suite's "
    "own .venv and its `reggaeton up` the `loop_stack` fixture",
    "make down": "the docs commands test below runs it last, on this stack",
    "rm -rf .state": EXCLUDED["rm -rf .state"],
}
# How far a probability may be from the documented one. Each demo trains its own champion, and this
# stack's is smaller than the demo's (4 trials of one family on 3 folds, the loop under test): for the
# README's song it answered 0.81 where the documented demo's said 0.99. A wrong field, a probability on
# another scale or a flipped label still fails.
PROBABILITY_TOLERANCE = 0.25
# Settings that reach the subprocesses: where the state is and how small training is, never a URL.
FORWARDED = re.compile(r"REGGAETON_(STATE_DIR|MODE|TRAINING__.*|PROMOTION__.*|DATA__.*|PREFECT__WORK_POOL)$")


def docs_commands() -> list[str]:
    """The command lines of the docs' ```bash blocks, comments dropped, in the docs' order, once each."""
    found: list[str] = []
    for doc in COMMAND_DOCS:
        for command in bash_commands(read(doc)):
            if command not in found:
                found.append(command)
    return found


def _verb(command: str) -> str:
    words = [w for w in shlex.split(command) if not w.startswith("--stack") and w not in ("local", "compose")]
    if words[0] == "make":
        return words[1]
    if words[0] == "curl":
        return "curl"
    return next((w for w in words[1:] if w in ORDER), words[-1])


def _as_run_here(command: str, settings: Settings) -> str:
    """The docs' command line as this test runs it: fewer trials, the session stack's API address."""
    for old, new in SUBSTITUTIONS.items():
        command = command.replace(old, new)
    return command.replace(DOCUMENTED_API, stack.api_url(settings))


def quick_start() -> list[tuple[str, Any]]:
    """The README's quick start: each command of its ```bash blocks, in order, with the answer the README
    documents for it (the ```json block right after a `curl`), else None."""
    blocks = fenced_blocks(section(read("README.md"), "## Quick start"))
    steps: list[tuple[str, Any]] = []
    for index, (language, block) in enumerate(blocks):
        if language != "bash":
            continue
        after, answer = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        for command in block_commands(block):
            documented = json.loads(answer) if command.startswith("curl") and after == "json" else None
            steps.append((command, documented))
    return steps


def _check_prediction_answer(answer: Any, documented: Any, served_version: str) -> None:
    """Same fields and types as documented, the same label, the probability within the tolerance, and
    the version that answered the one the API serves."""
    assert set(answer) == set(documented) == {"predictions"}, answer
    assert len(answer["predictions"]) == len(documented["predictions"]), answer
    for got, expected in zip(answer["predictions"], documented["predictions"], strict=True):
        types = {key: type(value) for key, value in got.items()}
        assert types == {key: type(value) for key, value in expected.items()}, (got, expected)
        assert got["label"] == expected["label"], (got, expected)
        assert abs(got["probability"] - expected["probability"]) <= PROBABILITY_TOLERANCE, (got, expected)
        assert got["model_version"] == served_version, (got, served_version)
        assert uuid.UUID(got["id"]).version == uuid.UUID(expected["id"]).version, (got, expected)


def _environment(settings: Settings) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("REGGAETON_") and key not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")
    }
    forwarded = stack.settings_environment(settings)
    env.update({key: value for key, value in forwarded.items() if FORWARDED.match(key)})
    return env


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, shell=True, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _served(settings: Settings) -> dict[str, object] | None:
    try:
        response = httpx.get(f"{stack.api_url(settings)}/model", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _check_served_within_a_poll(settings: Settings, client: MlflowClient, version: str, began: float) -> None:
    """The alias is the promoted version and the API serves it within one poll interval (plus its load)."""
    champion = registry.get_alias(client, settings.mlflow.model_name, names.CHAMPION)
    assert champion is not None and str(champion.version) == version
    served = demo.wait_until(
        f"the API serving version {version}",
        lambda: ((m := _served(settings)) is not None and str(m["version"]) == version and m) or None,
        timeout_s=60,
        every_s=0.1,
    )
    # Measured from the end of the command: the alias moved before it returned.
    waited = time.monotonic() - began
    load = float(served["load_seconds"])  # type: ignore[arg-type]
    assert waited <= settings.serving.poll_interval_s + load + 1.0, (waited, load)


def _check_monitor_progress(output: str) -> None:
    """`reggaeton monitor` showed the run as it went, in plain lines (its stdout is not a terminal here)."""
    assert "\r" not in output and "\033[" not in output, output
    assert re.search(r"^\[ *[\d.]+ s\] flow run \S+: Running$", output, re.MULTILINE), output
    assert re.search(r"^\[ *[\d.]+ s\] task analyse\S*: Completed in [\d.]+ s$", output, re.MULTILINE), output
    assert re.search(r"^\[ *[\d.]+ s\] flow run \S+: Completed$", output, re.MULTILINE), output
    # One live line per chunk window the run analysed, as many as the run recorded (after the docs'
    # `simulate` there are some, unless a scheduled run took that traffic first: then none on either side).
    windows = re.findall(r"^\[ *[\d.]+ s\]   chunk \d+/\d+ .*rows, estimated ROC-AUC", output, re.MULTILINE)
    recorded = re.search(r"^monitoring: last run .* (\d+) chunk\(s\)", output, re.MULTILINE)
    assert recorded is not None and len(windows) == int(recorded.group(1)), output


def _ensure_versions_for_the_docs(settings: Settings, env: dict[str, str], client: MlflowClient) -> None:
    """Versions 1 and 2 exist and 2 is the champion, 1 its predecessor (the docs' examples use them:
    `promote --version 1` then moves the alias, so `rollback` has a previous champion to go back to).

    After test_loop_e2e this holds already (1 was the first champion, 2 its successor); run alone, the
    test trains them here through the command line, and promotes 2 when the gate kept 1.
    """
    name = settings.mlflow.model_name
    while len(client.search_model_versions(f"name='{name}'")) < 2:
        result = _run(".venv/bin/reggaeton train --gate --n-trials 2", env)
        assert result.returncode == 0, result.stderr[-3000:]
    champion = registry.get_alias(client, name, names.CHAMPION)
    if champion is None or str(champion.version) != "2":
        result = _run('.venv/bin/reggaeton promote --version 2 --reason "the docs commands set-up"', env)
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_a_version_that_does_not_exist_is_one_line(loop_stack: Settings) -> None:
    """Runs before the docs commands, whose last one stops the stack."""
    env = _environment(loop_stack)
    for command in ("gate --version 999", "promote --version 999 --reason nope"):
        result = _run(f".venv/bin/reggaeton {command}", env)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "reggaeton-classifier has no version '999'" in lines[0], result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def _session(leader: int) -> list[str]:
    """The command lines of every process in the session ``leader`` started (the stack starts each
    service in a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # it ended meanwhile
        if int(fields[3]) == leader:  # state, ppid, pgrp, session
            found.append(command)
    return found


@pytest.mark.slow
def test_the_mlflow_server_runs_without_a_job_runner(loop_stack: Settings) -> None:
    """MLflow 3's server forks a job runner (about 7 polling processes) unless told not to; the stack's
    MLflow runs only its web server."""
    record = stack.read_record(loop_stack, "mlflow")
    assert record is not None and record.is_running()
    commands = _session(record.pid)
    assert any("uvicorn" in command for command in commands), commands  # the server is there to see
    assert not [c for c in commands if "mlflow.server.jobs" in c or "huey" in c], commands


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_readme_quick_start_answers_as_documented(loop_stack: Settings) -> None:
    """The quick start's commands as a newcomer runs them, on this stack once its demo loop has run (after
    test_loop_e2e; run alone, the versions the docs' examples use are trained here first)."""
    settings = loop_stack
    env = _environment(settings)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    steps = quick_start()
    assert steps[0][0] == "make demo", steps
    assert any(documented is not None for _, documented in steps), "no curl with its documented answer"
    if demo.champion_version(client, settings) is None:
        _ensure_versions_for_the_docs(settings, env, client)
    served = demo.wait_until("the API serving the champion", lambda: _served(settings), 120, 0.5)
    for command, documented in steps:
        if command in QUICK_START_COVERED:
            continue
        assert documented is not None, f"a quick start command neither run here nor covered: {command}"
        result = _run(_as_run_here(command, settings), env)
        assert result.returncode == 0, result.stderr
        _check_prediction_answer(json.loads(result.stdout), documented, str(served["version"]))


@pytest.mark.slow
def test_the_documented_refusal_is_the_apis(loop_stack: Settings) -> None:
    """The README shows the answer to the challenge's own example (loudness 125.513): the API gives it."""
    documented = next(
        json.loads(block)
        for language, block in fenced_blocks(section(read("README.md"), "## The model's inputs"))
        if language == "json"
    )
    response = httpx.post(f"{stack.api_url(loop_stack)}/predict", json=INVALID_EXAMPLE_SONG, timeout=30)
    assert response.status_code == 422
    assert response.json() == documented


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_docs_command_runs_against_the_running_stack(loop_stack: Settings) -> None:
    settings = loop_stack
    env = _environment(settings)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    commands = docs_commands()
    excluded = {c for c in commands if any(c.startswith(prefix) for prefix in EXCLUDED)}
    to_run = [c for c in commands if c not in excluded]
    unknown = [c for c in to_run if _verb(c) not in ORDER]
    assert not unknown, f"docs commands neither run nor excluded (add them to ORDER or EXCLUDED): {unknown}"
    assert {_verb(c) for c in to_run} >= {"up", "status", "train", "gate", "promote", "rollback", "monitor"}
    _ensure_versions_for_the_docs(settings, env, client)

    ran = []
    for command in sorted(to_run, key=lambda c: ORDER.index(_verb(c))):
        line = _as_run_here(command, settings)
        began = time.monotonic()
        result = _run(line, env)
        ended = time.monotonic()
        print(f"{ended - began:6.1f} s  {line}")  # shown when the test fails, and with -s
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"{line}\n{result.stderr[-3000:]}"
        ran.append(line)
        if _verb(command) == "promote":
            version = re.search(r"--version (\S+)", command).group(1)  # type: ignore[union-attr]
            _check_served_within_a_poll(settings, client, version, ended)
        if _verb(command) == "monitor":
            _check_monitor_progress(result.stdout)
        if _verb(command) == "status":
            text = result.stdout
            assert "services down: none" in text, text
            assert f"MLflow      {stack.mlflow_url(settings)}" in text, text
            assert "its own held-out rows (not comparable across versions)" in text, text
            assert "the gate's figures, both models on the same" in text, text
            assert "API serves version" in text, text
            assert "reggaeton_prediction_log_spool_bytes" in text and "_created" not in text, text
    assert len(ran) == len(to_run)
