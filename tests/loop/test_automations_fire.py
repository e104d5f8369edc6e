"""The automations fire on a real Prefect server: a webhook notification reaches the local receiver,
a burst of duplicate `degraded` events gives one notification and one retrain run, and the debounce is
kept per model version."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import StateType
from prefect.events import Event as PrefectEvent
from prefect.events.clients import get_events_client
from prefect.states import Running

from adapters import prefect_events
from adapters.prefect_api import prefect_api
from embedded.manual import wait_until
from embedded.receiver import read_alerts
from flows import deploy
from flows.automations import apply_automations
from monitoring.events import emit_alerts
from monitoring.policy import Alert, AlertKind, VersionState, advance
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
def test_a_run_silent_from_its_start_is_marked_crashed(
    tmp_path: Path, prefect_api_url: str, receiver: tuple[int, Path]
) -> None:
    # Heartbeats leave a flow run's process asynchronously: killed early, it may never have sent one.
    # The server's own Running event must then start the silence count.
    port, _ = receiver  # the crash's notification goes to this test's receiver, not to a running demo's
    settings = Settings(
        state_dir=tmp_path / "state",
        prefect={"api_url": prefect_api_url, "zombie_after_beats": 2, "alert_receiver_port": port},
    )
    apply_automations(settings)
    with prefect_api(settings), get_client(sync_client=True) as client:
        run = client.create_flow_run(_silent)
        client.set_flow_run_state(run.id, Running(), force=True)

        def state() -> StateType | None:
            current = client.read_flow_run(run.id).state
            return current.type if current else None

        crashed = _wait_for(lambda: state() == StateType.CRASHED, timeout_s=settings.zombie_after_s + 150)
    assert crashed, f"still {state()} after {settings.zombie_after_s + 150} s"


def _degraded(version: str, at: datetime) -> Alert:
    return Alert(
        AlertKind.DEGRADED,
        version,
        metric="roc_auc",
        value=0.48,
        threshold=0.8,
        window_start=at - timedelta(minutes=10),
        window_end=at,
        source="realized",
        chunks=2,
    )


@pytest.mark.slow
def test_a_new_champion_degrading_in_the_window_still_retrains_once_and_notifies(
    project: Path, tmp_path: Path, prefect_api_url: str, receiver: tuple[int, Path]
) -> None:
    """Version 1 degrades (its retrain promotes version 2), then version 2 degrades inside the window
    version 1 opened: one notification and one retrain for version 2; its repeats retrain no more and
    notify once that the retrain is suppressed, saying until when (issue 26)."""
    port, alerts_path = receiver
    model = f"reggaeton-per-version-{uuid4().hex[:8]}"  # its own resource: its own debounce buckets
    settings = Settings(
        state_dir=tmp_path / "state",
        mlflow={"model_name": model},
        prefect={
            "api_url": prefect_api_url,
            "work_pool": "reggaeton-pool-per-version",
            "alert_receiver_port": port,
            "debounce_s": 300,  # every step below happens well inside it
        },
    )
    deploy.deploy(settings, project_dir=project)
    window = settings.prefect.debounce_s
    runs_before = _retrain_runs(settings)

    def subjects(prefix: str) -> list[dict[str, Any]]:
        return [a for a in read_alerts(alerts_path) if a["subject"].startswith(prefix)]

    def monitor_run(previous: VersionState | None, version: str) -> VersionState:
        """What the monitor flow does after a run that found the version degraded."""
        now = datetime.now(UTC)
        state, retrain = advance(previous, version, [_degraded(version, now)], 2, now, window)
        emit_alerts([_degraded(version, now)], model, prefect_api_url, state=state, retrain=retrain)
        return state

    first = monitor_run(None, "1")
    wait_until("version 1's retrain", lambda: _retrain_runs(settings) == runs_before + 1 or None, 90, 0.5)
    wait_until("version 1's notification", lambda: subjects("[reggaeton] model degraded") or None, 90, 0.5)
    assert first.retrain_requested_at is not None

    # The retrain promoted version 2; it degrades at once, inside version 1's window.
    prefect_events.emit(Event.PROMOTED, model, "2", {"action": "gate"}, drain_timeout_s=15)
    second = monitor_run(None, "2")
    wait_until("version 2's retrain", lambda: _retrain_runs(settings) == runs_before + 2 or None, 90, 0.5)
    [_, notice] = wait_until(
        "version 2's notification",
        lambda: found if len(found := subjects("[reggaeton] model degraded")) == 2 else None,
        90,
        0.5,
    )
    assert "version 2 degraded since" in notice["body"]
    assert "retrain requested (the first for this version)" in notice["body"]

    # Version 2 stays degraded: the next runs emit again, inside its window.
    third = monitor_run(second, "2")
    monitor_run(third, "2")
    [suppressed] = wait_until(
        "the suppressed retrain's notification",
        lambda: subjects("[reggaeton] model still degraded: retrain suppressed") or None,
        90,
        0.5,
    )
    allowed = (second.retrain_requested_at + timedelta(seconds=window)).isoformat(timespec="seconds")
    assert f"requests the next one from {allowed}" in suppressed["body"]
    time.sleep(10)  # bounded: the repeats must start nothing and tell nothing more
    assert _retrain_runs(settings) == runs_before + 2
    assert len(subjects("[reggaeton] model degraded")) == 2
    assert len(subjects("[reggaeton] model still degraded")) == 1
