"""Faults the loop survives: a worker killed in the middle of a retrain, then restarted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun

from flows import automations, demo, stack
from flows.deploy import deploy
from reggaeton.settings import Settings

# The first run blocks (long enough to be killed); the rerun finishes at once.
SLOW_FIRST_RUN = """
import time
from pathlib import Path

from prefect import flow


@flow(name="train-and-promote")
def train_and_promote() -> str:
    marker = Path(__file__).with_name("first-run-started")
    if not marker.exists():
        marker.write_text("started")
        time.sleep(900)
    return "ok"
"""


def _runs(settings: Settings) -> list[FlowRun]:
    """Runs of the retrain deployment started by a person or an automation (not its weekly schedule)."""
    with automations.prefect_api(settings), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train-and-promote"]))
        )
    return [run for run in runs if not run.auto_scheduled]


def _state(settings: Settings, flow_run_id: UUID) -> str | None:
    with automations.prefect_api(settings), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    return run.state.name if run.state else None


@pytest.mark.slow
def test_worker_killed_mid_retrain_the_retrain_runs_again(
    project: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """On the stack's own Prefect server, as in production: silent runs are marked Crashed, then rerun."""
    (project / "flows" / "promote.py").write_text(SLOW_FIRST_RUN)
    marker = project / "flows" / "first-run-started"
    settings = Settings(state_dir=tmp_path / "state", prefect={"port": free_port()})
    try:
        stack.up(settings, ["prefect-server"])
        deploy(settings, project_dir=project)
        stack.up(settings, ["worker"])
        with automations.prefect_api(settings), get_client(sync_client=True) as client:
            first = client.create_flow_run_from_deployment(demo.deployment_id(settings, "train-and-promote"))
        demo.wait_until("the first run to start", lambda: marker.exists() or None, timeout_s=180)

        assert stack.stop("worker", settings) == "stopped"  # the worker and its flow run process
        assert stack.up(settings, ["worker"]) == {"worker": "started"}

        seen: set[str | None] = set()

        def crashed() -> bool | None:
            seen.add(state := _state(settings, first.id))
            return True if state == "Crashed" else None

        try:
            demo.wait_until("the killed run to be marked Crashed", crashed, timeout_s=420, every_s=3)
        except TimeoutError as exc:
            raise AssertionError(f"states seen: {seen}") from exc
        rerun = demo.wait_until(
            "a rerun of the retrain",
            lambda: next((r for r in _runs(settings) if r.id != first.id), None),
            timeout_s=120,
        )
        # The killed run's deployment concurrency slot is a lease the flow engine renews for 300 s at a
        # time; the rerun may wait in AwaitingConcurrencySlot until that lease expires.
        try:
            final = demo.wait_for_final(settings, rerun.id, timeout_s=600)
        except TimeoutError as exc:
            raise AssertionError(f"rerun stuck in state {_state(settings, rerun.id)}") from exc
        assert final.state is not None and final.state.is_completed()
        time.sleep(5)
        assert len(_runs(settings)) == 2  # one rerun, not a loop of them
    finally:
        stack.down(settings)
