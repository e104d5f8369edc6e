"""A rerun of a retrain request finds what earlier attempts left: one version per request, no open runs."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from adapters import registry
from adapters.tracking import resume_request
from reggaeton import names
from reggaeton.data import Split, features_array, split, synthetic_dataset
from reggaeton.model import LOGISTIC_REGRESSION, build_pipeline
from reggaeton.schema import TARGET
from reggaeton.settings import Settings


def _open_run(client: MlflowClient, settings: Settings, request: str) -> str:
    """A training run of ``request``, RUNNING (a killed flow run's may look FINISHED: see attempt 2)."""
    experiment_id = registry.ensure_experiment(client, settings.mlflow.training_experiment, settings)
    run = client.create_run(experiment_id, tags={names.Tag.RETRAIN_REQUEST: request})
    return str(run.info.run_id)


def _register(client: MlflowClient, settings: Settings, data: Split, request: str) -> str:
    """A version registered for ``request``; returns its training run's id."""
    run_id = _open_run(client, settings, request)
    pipeline = build_pipeline(LOGISTIC_REGRESSION, {"C": 1.0}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET].to_numpy())
    with mlflow.start_run(run_id=run_id):
        info = registry.log_model(pipeline, data.holdout, threshold=0.5)
    registry.register(client, info, settings.mlflow.model_name, {names.Tag.RETRAIN_REQUEST: request})
    return run_id


def _status(client: MlflowClient, run_id: str) -> str:
    return str(client.get_run(run_id).info.status)


def test_a_rerun_reuses_the_version_of_its_request_and_closes_abandoned_runs(settings: Settings) -> None:
    client = registry.connect(settings)
    data = split(synthetic_dataset(600, seed=1), 0.3, seed=1)
    abandoned = _open_run(client, settings, "request-a")  # attempt 1: killed while tuning
    finished = _open_run(client, settings, "request-a")  # attempt 2: killed after a step closed its run
    client.set_terminated(finished, "FINISHED")
    failed = _open_run(client, settings, "request-a")  # attempt 3: failed, and says so
    client.set_terminated(failed, "FAILED")
    registered = _register(client, settings, data, "request-a")  # 4: registered
    _register(client, settings, data, "request-b")  # another request's version 2
    other = _open_run(client, settings, "request-b")  # and its attempt in progress
    model_name = settings.mlflow.model_name
    client.set_registered_model_alias(model_name, names.CHALLENGER, "2")

    assert resume_request(settings, "request-a") == "1"
    challenger = registry.get_alias(client, model_name, names.CHALLENGER)
    assert challenger is not None and str(challenger.version) == "1"
    assert _status(client, abandoned) == "KILLED"
    assert _status(client, finished) == "KILLED"
    assert _status(client, failed) == "FAILED"
    assert _status(client, registered) == "FINISHED"
    assert _status(client, other) == "RUNNING"  # not this request's business

    assert resume_request(settings, "request-c") is None  # a new request trains
    assert len(client.search_model_versions(f"name='{model_name}'")) == 2
