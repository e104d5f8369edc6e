"""The MLflow run of a batch scoring: what was scored, by which version, how many rows, how fast.

Through the client API (no fluent active run), in the batch-scoring experiment. Each attempt of a run
(a resumed one too) is its own MLflow run; the manifest it ends with is attached as an artifact.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus

from adapters import registry
from adapters.catalogue import MANIFEST, write_json
from reggaeton.settings import Settings

# MLflow keeps at most this many characters of a parameter's value.
PARAM_LENGTH: Final = 6000


def start(
    client: MlflowClient, settings: Settings, name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """A new running run in the batch-scoring experiment, with its parameters; returns its id."""
    experiment_id = registry.ensure_experiment(client, settings.mlflow.batch_experiment, settings)
    run = client.create_run(experiment_id, run_name=name, tags=dict(tags))
    client.log_batch(
        run.info.run_id,
        params=[Param(key, str(value)[:PARAM_LENGTH]) for key, value in params.items() if value is not None],
    )
    return str(run.info.run_id)


def finish(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    manifest: Mapping[str, Any] | None = None,
    failed: bool = False,
) -> None:
    """Log the run's figures (and its manifest as an artifact), then end it."""
    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(
            run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()]
        )
    if manifest is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / MANIFEST
            write_json(path, manifest)
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))
