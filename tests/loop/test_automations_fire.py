"""The automations fire on a real Prefect server: a webhook notification reaches the local receiver,
and a burst of duplicate `degraded` events gives one notification and one retrain run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import StateType
from prefect.events import Event as PrefectEvent
from prefect.events.clients import get_events_client
from prefect.states import Running

from adapters.prefect_api import prefect_api
from embedded.receiver import read_alerts
from flows import deploy
from flows.automations import ZOMBIE_AFTER_S, apply_automations
from reggaeton.names import MODEL_NAME, Event
from reggaeton.settings import Settings

RESOURCE = {"prefect.resource.id": f"{Event.RESOURCE_PREFIX}.{MODEL_NAME}"}


def _emit(settings: Settings, name: str, count: int = 1, **payload: Any) -> None:
    async def send() -> None:
        async with get_events_client() as client:
            for _ in range(count):
                await client.emit(PrefectEvent(event=name, resource=RESOURCE, payload=payload))

    with prefect_api(settings):
        asyncio.run(send())


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def _retrain_runs(settings: Settings) -> int:
    with prefect_api(settings), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train-and-promote"]))
        )
    return len(runs)


@pytest.mark.slow
def test_events_notify_and_degraded_burst_retrains_once(
    project: Path, tmp_path: Path, prefect_api_url: str, receiver: tuple[int, Path]
) -> None:
    port, alerts_path = receiver
    settings = Settings(
        state_dir=tmp_path / "state",
        prefect={"api_url": prefect_api_url, "work_pool": "reggaeton-pool-fire", "alert_receiver_port": port},
    )
    deploy.deploy(settings, project_dir=project)
    runs_before = _retrain_runs(settings)

    _emit(settings, Event.PROMOTED, version="2", previous="1")
    assert _wait_for(lambda: len(read_alerts(alerts_path)) >= 1, 90), "no notification reached the receiver"
    [promoted] = read_alerts(alerts_path)
    assert promoted["subject"] == "[reggaeton] new champion promoted"
    assert f"event: {Event.PROMOTED}" in promoted["body"]
    assert "'version': '2'" in promoted["body"]

    _emit(settings, Event.DEGRADED, count=3, metric="roc_auc", value=0.6, threshold=0.8, model_version="2")

    def degraded_alerts() -> list[dict[str, Any]]:
        return [a for a in read_alerts(alerts_path) if a["subject"].startswith("[reggaeton] model degraded")]

    assert _wait_for(lambda: len(degraded_alerts()) >= 1, 90), "no degraded notification"
    assert _wait_for(lambda: _retrain_runs(settings) > runs_before, 60), "the trigger started no retrain"
    time.sleep(10)  # bounded wait: the duplicates must not fire again
    assert len(degraded_alerts()) == 1
    assert _retrain_runs(settings) == runs_before + 1


@flow(name="silent-from-its-start")
def _silent() -> None:
    """Never run: its run is only moved to Running, as by a process killed before its first heartbeat."""


@pytest.mark.slow
def test_a_run_silent_from_its_start_is_marked_crashed(tmp_path: Path, prefect_api_url: str) -> None:
    # Heartbeats leave a flow run's process asynchronously: killed early, it may never have sent one.
    # The server's own Running event must then start the silence count.
    settings = Settings(state_dir=tmp_path / "state", prefect={"api_url": prefect_api_url})
    apply_automations(settings)
    with prefect_api(settings), get_client(sync_client=True) as client:
        run = client.create_flow_run(_silent)
        client.set_flow_run_state(run.id, Running(), force=True)

        def state() -> StateType | None:
            current = client.read_flow_run(run.id).state
            return current.type if current else None

        crashed = _wait_for(lambda: state() == StateType.CRASHED, timeout_s=ZOMBIE_AFTER_S + 150)
    assert crashed, f"still {state()} after {ZOMBIE_AFTER_S + 150} s"
