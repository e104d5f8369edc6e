"""Which Prefect API the package's clients use: the settings' server, or one Prefect already has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Pending

from adapters.prefect_api import (
    HANDED_BACK_MESSAGE,
    WORKER_NAME_LABEL,
    deployment_runs,
    hand_back_pending_runs,
    prefect_api,
    prefect_api_at,
    slot_holders,
    state_events,
)
from reggaeton.settings import Settings

ELSEWHERE = "http://127.0.0.1:9/api"


def _settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", prefect={"port": 4999})


def test_stack_tools_always_use_the_settings_server(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with temporary_settings(updates={PREFECT_API_URL: ELSEWHERE}), prefect_api(settings):
        assert PREFECT_API_URL.value() == settings.prefect_api_url == "http://127.0.0.1:4999/api"


def test_entry_points_keep_a_configured_server_and_default_to_the_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with (
        temporary_settings(updates={PREFECT_API_URL: ELSEWHERE}),
        prefect_api(settings, keep_configured=True),
    ):
        assert PREFECT_API_URL.value() == ELSEWHERE
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with prefect_api(settings, keep_configured=True):
            assert PREFECT_API_URL.value() == settings.prefect_api_url
        assert PREFECT_API_URL.value() is None


def test_runs_of_a_deployment_and_handing_back_only_the_stopped_workers_pending_runs(
    prefect_api_url: str,
) -> None:
    """On a real server: the shared "runs of a deployment" query, and the hand-back a stopped worker does
    (its own Pending runs and the ones no worker labelled yet; never another worker's)."""
    pool = f"handback-{uuid4().hex[:8]}"
    began = datetime.now(UTC) - timedelta(seconds=5)
    with prefect_api_at(prefect_api_url), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name(f"flow-{pool}")
        deployment = client.create_deployment(flow_id, pool, work_pool_name=pool, entrypoint="f.py:f")
        runs = {who: client.create_flow_run_from_deployment(deployment) for who in ("mine", "other", "none")}
        for who, run in runs.items():
            client.set_flow_run_state(run.id, Pending())
            if who != "none":
                client.update_flow_run_labels(run.id, {WORKER_NAME_LABEL: who})

        handing = datetime.now(UTC)  # after the runs' first Scheduled events
        handed = hand_back_pending_runs(pool, worker="mine", settle_s=30)

        assert sorted(handed) == sorted([runs["mine"].name, runs["none"].name])
        # Settled: the server had taken each hand-back's event in before the call returned.
        recorded = state_events(client, {run.id for run in runs.values()}, "Scheduled", handing)
        assert recorded == {runs[who].id for who in ("mine", "none")}
        states = {who: client.read_flow_run(run.id).state for who, run in runs.items()}
        assert states["other"] is not None and states["other"].type == StateType.PENDING
        for who in ("mine", "none"):
            state = states[who]
            assert state is not None and state.type == StateType.SCHEDULED, (who, state)
            assert state.message == HANDED_BACK_MESSAGE
        pending = deployment_runs(client, deployment, StateType.PENDING)
        assert [run.id for run in pending] == [runs["other"].id]
        assert len(deployment_runs(client, deployment, since=began)) == 3
        assert deployment_runs(client, deployment, since=datetime.now(UTC) + timedelta(hours=1)) == []
        assert [run.id for run in slot_holders(client, deployment)] == [runs["other"].id]
