"""Fixtures of the loop tests: a stand-in project for prefect.yaml and settings on the test server."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedded import stack
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]

# Stand-ins with the agreed entrypoints, so the deployment file is tested on its own.
STUB_FLOW = """
from prefect import flow


@flow(name="{name}")
def {function}() -> str:
    return "ok"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the real prefect.yaml and stand-in flows at its entrypoints."""
    root = tmp_path / "project"
    (root / "flows").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "prefect.yaml", root / "prefect.yaml")
    config = yaml.safe_load((root / "prefect.yaml").read_text())
    for entry in config["deployments"]:
        path, function = entry["entrypoint"].split(":")
        with (root / path).open("a") as stub:  # one file may hold several flows (flows/promote.py)
            stub.write(STUB_FLOW.format(name=entry["name"], function=function))
    return root


@pytest.fixture
def loop_settings(tmp_path: Path, prefect_api_url: str) -> Settings:
    """Settings on the session's Prefect server, with a pool name of their own."""
    return Settings(
        state_dir=tmp_path / "state",
        prefect={"api_url": prefect_api_url, "work_pool": "reggaeton-pool-test"},
    )


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a free loopback port, never the same one twice in a test.

    The kernel may hand out a just-closed ephemeral port again; two services of one stack on one port
    would each take the other for itself.
    """
    given: set[int] = set()

    def pick() -> int:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in given:
                given.add(port)
                return port

    return pick


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, so the kernel cannot hand one out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def _running_stack(
    state_dir: Path, work_pool: str, poll_interval_s: float, **sections: Any
) -> Iterator[Settings]:
    """A whole local stack on free ports, the loop's short training settings, and ``sections`` added."""
    prefect_port, receiver_port, mlflow_port, api_port = _free_ports(4)
    settings = Settings(
        state_dir=state_dir,
        prefect={"port": prefect_port, "alert_receiver_port": receiver_port, "work_pool": work_pool},
        mlflow={"port": mlflow_port},
        serving={"port": api_port, "poll_interval_s": poll_interval_s},
        # Few trials over three families may pick logistic regression, which cannot learn the drift's
        # sub-genre (a second cluster): the gate then rightly rejects it. The loop is under test here.
        training={"cv_folds": 3, "bootstrap_rounds": 200, "families": ("hist_gradient_boosting",)}
        | sections.pop("training", {}),
        # The loop is under test, not the latency guardrail (noisy on a shared 2-core machine).
        promotion={"bootstrap_rounds": 200, "latency_tolerance": 50.0} | sections.pop("promotion", {}),
        **sections,
    )
    settings = stack.stack_settings(settings)
    try:
        stack.up(settings)
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="session")
def loop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One whole local stack on free ports for the session: the loop test, then the operator commands."""
    state = tmp_path_factory.mktemp("loop") / "state"
    with _running_stack(state, "reggaeton-pool-e2e", 1.0, training={"n_trials": 4}) as settings:
        yield settings


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A whole local stack under the shadow policy, short windows: the live loop's tests share it."""
    # Short windows: a look at 30 labelled positives (then 60), counts every second; a canary stays at
    # its first step (half the requests) so the gate judges its latency, never its step time, against a
    # budget of 1 ms (the slow canary takes ~10 ms a song); shadow calls of 64 rows stay within 2 s.
    live = {
        "policy": "shadow",
        "min_positives": 30,
        "max_looks": 2,
        "bootstrap_rounds": 200,
        "settle_s": 1.0,
        "stats_interval_s": 1.0,
        "shadow_timeout_s": 2.0,
        "shadow_batch_rows": 64,
        "canary_steps": (0.5, 1.0),
        "canary_timeout_s": 2.0,
        "canary_latency_budget_ms": 1.0,
    }
    state = tmp_path_factory.mktemp("live") / "state"
    # No declared slices: the stale challenger of test_live_loop is one the champion-reference slice
    # (issue 26) also rejects offline; without slices only the live rows show it is worse, which is
    # what those tests check. The slices have their own tests (tests/reggaeton/test_promotion_slices.py).
    with _running_stack(
        state, "reggaeton-pool-live", 0.5, training={"n_trials": 2}, live=live, promotion={"slices": ()}
    ) as settings:
        yield settings
