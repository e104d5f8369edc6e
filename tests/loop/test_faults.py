"""Faults the loop survives, with real processes on free loopback ports.

A worker killed in the middle of the real `train-and-promote` retrain, before and after registering its
version (the rerun serves the same request: one version per retrain request), and the MLflow server
restarted while the retrain is training.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun

from adapters.prefect_api import HEARTBEAT, prefect_api, state_events
from embedded import demo, stack
from flows.deploy import deploy
from reggaeton import names
from reggaeton.promotion import PROMOTED
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _retrain_runs(settings: Settings) -> list[FlowRun]:
    """Runs of the retrain deployment started by a person or an automation (not its weekly schedule)."""
    with prefect_api(settings), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train-and-promote"]))
        )
    return sorted((run for run in runs if not run.auto_scheduled), key=lambda run: run.created or 0)


def _state(settings: Settings, flow_run_id: UUID) -> str | None:
    with prefect_api(settings), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    return run.state.name if run.state else None


def _start_retrain(settings: Settings) -> FlowRun:
    with prefect_api(settings), get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(demo.deployment_id(settings, "train-and-promote"))


def _heartbeat_recorded(settings: Settings, run: FlowRun) -> bool | None:
    assert run.created is not None
    with prefect_api(settings), get_client(sync_client=True) as client:
        return True if state_events(client, {run.id}, HEARTBEAT, run.created) else None


def _kill_worker(settings: Settings, run: FlowRun) -> None:
    """Stop the worker with its flow run process, restart it, and wait for that run to be Crashed.

    On the stack's own Prefect server, as in production: a silent run is marked Crashed. The kill waits
    until the server has a heartbeat of the run, so the silence is counted from a heartbeat, as for a
    run killed mid-way; a run killed before its first heartbeat is covered by
    ``test_a_run_silent_from_its_start_is_marked_crashed``.
    """
    demo.wait_until(
        f"a heartbeat of run {run.name}", lambda: _heartbeat_recorded(settings, run), timeout_s=120
    )
    assert stack.stop("worker", settings) == "stopped"
    assert stack.up(settings, ["worker"]) == {"worker": "started"}
    seen: set[str | None] = set()

    def crashed() -> bool | None:
        seen.add(state := _state(settings, run.id))
        return True if state == "Crashed" else None

    try:
        demo.wait_until(f"run {run.name} to be marked Crashed", crashed, timeout_s=420, every_s=3)
    except TimeoutError as exc:
        raise AssertionError(f"states of {run.name} seen: {seen}") from exc


def _rerun(settings: Settings, known: int) -> FlowRun:
    """The automation's rerun: the retrain run after the ``known`` ones."""
    return demo.wait_until(
        "the automation's rerun",
        lambda: runs[known] if len(runs := _retrain_runs(settings)) > known else None,
        timeout_s=120,
    )


def _wait_completed(settings: Settings, run: FlowRun) -> None:
    # A killed run's deployment concurrency slot is a lease the flow engine renews for 300 s at a
    # time; the rerun may wait in AwaitingConcurrencySlot until that lease expires.
    try:
        final = demo.wait_for_final(settings, run.id, timeout_s=900)
    except TimeoutError as exc:
        raise AssertionError(f"run {run.name} stuck in state {_state(settings, run.id)}") from exc
    assert final.state is not None and final.state.is_completed(), final.state


N_TRIALS = 3
# urllib3, under MLflow's REST client, logs each retry of a request the server did not answer.
CONNECTION_RETRY = re.compile(r"Retrying \(.*\) after connection broken by .*(refused|NewConnectionError)")


def _small_stack_settings(tmp_path: Path, free_port: Callable[[], int], **prefect: object) -> Settings:
    settings = Settings(
        state_dir=tmp_path / "state",
        prefect={"port": free_port(), "alert_receiver_port": free_port(), **prefect},
        mlflow={"port": free_port()},
        training={
            "n_trials": N_TRIALS,
            "cv_folds": 3,
            "bootstrap_rounds": 200,
            "families": ("hist_gradient_boosting",),
        },
        promotion={"bootstrap_rounds": 200, "latency_tolerance": 50.0},
    )
    return stack.stack_settings(settings)


@pytest.fixture
def real_stack(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Settings]:
    """Prefect server, worker and MLflow server, deployed; stopped (by PID) whatever happens.

    Every crash of a retrain is rerun (no debounce window), so one request can crash twice.
    """
    settings = _small_stack_settings(tmp_path, free_port, debounce_s=0)
    try:
        stack.up(settings, ["prefect-server", "mlflow"])
        deploy(settings, project_dir=REPO_ROOT)
        stack.up(settings, ["worker"])
        yield settings
    finally:
        stack.down(settings)


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def _training_runs(settings: Settings) -> list[Run]:
    """Parent runs of the training experiment (trial runs excluded)."""
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow.training_experiment)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [run for run in runs if MLFLOW_PARENT_RUN_ID not in run.data.tags]


def _trial_runs(settings: Settings, parent_run_id: str) -> list[Run]:
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow.training_experiment)
    assert experiment is not None
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    )


def _versions(settings: Settings) -> list[str]:
    found = _client(settings).search_model_versions(f"name='{settings.mlflow.model_name}'")
    return sorted(str(version.version) for version in found)


def _connection_retries(settings: Settings) -> list[str]:
    log = stack.log_dir(settings) / "worker.log"  # the worker streams its flow runs' output here
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [line for line in text.splitlines() if CONNECTION_RETRY.search(line)]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_mlflow_restarted_during_training_the_retrain_completes(real_stack: Settings) -> None:
    """The flow rides out the outage, nothing lost: every trial recorded, one version, promoted.

    What absorbs it is MLflow's own REST client: urllib3 retries an unanswered request up to 7 times
    with exponential back-off (about four minutes in all), so an outage of a restart's length never
    reaches Prefect's task retries, which take over only for longer outages. The retry asserted on is
    therefore the client's, logged by urllib3 in the flow run's output.
    """
    settings = real_stack
    run = _start_retrain(settings)
    # A deterministic point: the training run exists in MLflow, and every later step needs the server.
    demo.wait_until("the training run in MLflow", lambda: _training_runs(settings) or None, 300, 1.0)

    assert stack.stop("mlflow", settings) == "stopped"
    # Down until the flow has really failed to reach it (bounded), then back on the same store.
    demo.wait_until(
        "a tracking call refused while MLflow is down",
        lambda: _connection_retries(settings) or None,
        timeout_s=300,
        every_s=1.0,
    )
    assert stack.up(settings, ["mlflow"]) == {"mlflow": "started"}

    _wait_completed(settings, run)
    # One training run, every trial recorded despite the outage, one version, and it is champion.
    (training,) = _training_runs(settings)
    assert training.info.status == "FINISHED"
    assert len(_trial_runs(settings, training.info.run_id)) == N_TRIALS
    assert _versions(settings) == ["1"]
    assert demo.champion_version(_client(settings), settings) == "1"
    version = _client(settings).get_model_version(settings.mlflow.model_name, "1")
    assert version.tags[names.Tag.DECISION] == PROMOTED


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_worker_killed_before_and_after_registration_one_version_per_request(
    real_stack: Settings,
) -> None:
    """Killed mid-training, the rerun trains; killed after registering, the rerun gates that version."""
    settings = real_stack
    first = _start_retrain(settings)

    # Kill 1: training under way (its MLflow run exists), nothing registered yet.
    demo.wait_until("the training run in MLflow", lambda: _training_runs(settings) or None, 300, 1.0)
    _kill_worker(settings, first)
    assert _versions(settings) == []
    second = _rerun(settings, 1)

    # Kill 2: the rerun has registered its version; the gate has not finished.
    # The rerun may first wait up to 300 s for the killed run's concurrency lease to lapse.
    demo.wait_until("the rerun's version", lambda: _versions(settings) or None, 900, 0.5)
    assert _state(settings, second.id) == "Running", "the rerun finished before it could be killed"
    _kill_worker(settings, second)
    third = _rerun(settings, 2)
    _wait_completed(settings, third)

    time.sleep(5)  # a further rerun would show up by now
    runs = _retrain_runs(settings)
    assert [run.id for run in runs] == [first.id, second.id, third.id]
    request = str(first.id)
    assert [run.parameters.get("request_id") for run in runs] == [None, request, request]
    # One version for the one request, promoted by the third run's gate.
    assert _versions(settings) == ["1"]
    client = _client(settings)
    version = client.get_model_version(settings.mlflow.model_name, "1")
    assert version.tags[names.Tag.RETRAIN_REQUEST] == request
    assert version.tags[names.Tag.DECISION] == PROMOTED
    assert demo.champion_version(client, settings) == "1"
    # Two trainings (the third run trained nothing); the interrupted one is not shown as finished.
    statuses = {run.info.run_id: run.info.status for run in _training_runs(settings)}
    assert statuses.pop(version.run_id) == "FINISHED"
    assert len(statuses) == 1 and set(statuses.values()) <= {"KILLED", "FAILED"}, statuses
