"""The score-catalogue deployment of prefect.yaml on a real Prefect server, run by a real worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pandas as pd
import pytest
import yaml
from catalogue_support import catalogue_frame, register_forest, scoring_settings, write_csv
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from adapters import prefect_api, registry
from embedded import manual
from flows import deploy
from reggaeton import names
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _prefect_file(folder: Path, deployment: str, pool: str) -> Path:
    """The real prefect.yaml's score-catalogue entry alone, with this test's own deployment and pool names."""
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    [entry] = [each for each in config["deployments"] if each["name"] == names.SCORE_DEPLOYMENT]
    entry = {**entry, "name": deployment, "work_pool": {**entry["work_pool"], "name": pool}}
    path = folder / "prefect.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": config["name"], "prefect-version": config["prefect-version"], "deployments": [entry]}
        )
    )
    return path


@contextlib.contextmanager
def _worker(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process worker on the settings' pool, with the settings in its environment; stopped by its PID."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REGGAETON_")}
    env.update(
        {
            **names.TELEMETRY_OFF,
            "PREFECT_API_URL": settings.prefect_api_url,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "REGGAETON_STATE_DIR": str(settings.state_path),
            "REGGAETON_MLFLOW__TRACKING_URI": settings.tracking_uri,
            "REGGAETON_BATCH__CHUNK_ROWS": str(settings.batch.chunk_rows),
            "REGGAETON_BATCH__WORKERS": str(settings.batch.workers),
            "REGGAETON_BATCH__PROGRESS_EVERY_S": str(settings.batch.progress_every_s),
        }
    )
    command = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        settings.prefect.work_pool,
        "--type",
        "process",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_the_deployment_scores_a_catalogue_on_a_worker_with_progress_in_the_ui(
    prefect_api_url: str, tmp_path: Path
) -> None:
    suffix = uuid4().hex[:8]
    deployment, pool = f"score-catalogue-{suffix}", f"score-pool-{suffix}"
    settings = scoring_settings(tmp_path / "state", chunk_rows=500, workers=2, progress_every_s=0.01)
    settings = settings.model_copy(
        update={
            "prefect": settings.prefect.model_copy(update={"api_url": prefect_api_url, "work_pool": pool})
        }
    )
    version = register_forest(settings, threshold=0.4)
    registry.connect(settings).set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version)
    songs = write_csv(catalogue_frame(3000), tmp_path / "songs.csv")

    deploy.ensure_work_pool(settings)
    prefect_file = _prefect_file(tmp_path, deployment, pool)
    subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file),
         "--name", deployment, "--pool", pool],
        cwd=REPO_ROOT, env=deploy.deploy_environment(settings), check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    with _worker(settings, tmp_path / "worker.log"), prefect_api.prefect_api(settings):
        run_id = prefect_api.submit_run(
            f"{names.SCORE_DEPLOYMENT}/{deployment}",
            {"input": str(songs), "out": str(tmp_path / "scored")},
            idempotency_key=suffix,
        )
        run = manual.wait_for_final(settings, run_id, timeout_s=600)
        assert run.state is not None and run.state.is_completed(), (
            run.state,
            (tmp_path / "worker.log").read_text(),
        )
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )

            def progress_lines() -> list[str] | None:
                """The run's progress lines, once its last one arrived (logs reach the server in batches)."""
                logs = prefect_api.logs_of(client, run_id, None)
                lines = [log.message for log in logs if log.name.endswith(f".{names.PROGRESS_LOG}")]
                done = any(line.startswith("3,000 of ~3,000 rows (100 %)") for line in lines)
                return lines if done else None

            # The progress log shows in the run's logs (the last line says 100 %).
            manual.wait_until("the run's last progress line", progress_lines, timeout_s=60, every_s=1)
            deployed = client.read_deployment_by_name(f"{names.SCORE_DEPLOYMENT}/{deployment}")

    assert (
        deployed.work_pool_name == pool and deployed.entrypoint == "flows/score_catalogue.py:score_catalogue"
    )
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert by_key[names.SCORE_PROGRESS_ARTIFACT_KEY].type == "progress"
    assert by_key[names.SCORE_PROGRESS_ARTIFACT_KEY].data == 100.0
    summary = str(by_key[names.SCORE_ARTIFACT_KEY].data)
    assert "3,000 read, 2,997 scored, 3 rejected" in summary and f"version {version}" in summary

    scores = pd.read_parquet(tmp_path / "scored" / "scores")
    assert len(scores) == 2997 and set(scores["model_version"]) == {version}
    manifest = (tmp_path / "scored" / "manifest.json").read_text()
    client = registry.connect(settings)
    mlflow_run = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT_BATCH).experiment_id],
        filter_string=f"tags.`{names.Tag.FLOW_RUN_ID}` = '{run_id}'",
    )
    assert len(mlflow_run) == 1 and mlflow_run[0].info.run_id in manifest
    assert mlflow_run[0].data.params["workers"] == "2"
