"""The demo's registry reads on a real SQLite registry: the champion and the newest version."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from adapters import registry
from embedded import demo, views
from reggaeton import names
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.model import LOGISTIC_REGRESSION, build_pipeline
from reggaeton.schema import TARGET
from reggaeton.settings import Settings


def test_champion_and_newest_version(settings: Settings) -> None:
    client = registry.connect(settings)
    assert demo.champion_version(client, settings) is None
    assert demo.latest_version(client, settings) is None

    data = split(synthetic_dataset(1000, seed=3), 0.3, seed=3)
    pipeline = build_pipeline(LOGISTIC_REGRESSION, {"C": 1.0}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET].to_numpy())
    experiment_id = registry.ensure_experiment(client, settings.mlflow.training_experiment, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(pipeline, data.holdout, threshold=0.5)
        registry.log_model_metrics(info, {"pr_auc": 0.81, "roc_auc": 0.93}, {})
    for _ in range(3):
        registry.register(client, info, settings.mlflow.model_name, {})
    client.set_registered_model_alias(settings.mlflow.model_name, names.CHAMPION, "2")
    # The most recently updated version is not the newest one.
    client.update_model_version(settings.mlflow.model_name, "1", description="edited last")

    assert demo.champion_version(client, settings) == "2"
    assert demo.latest_version(client, settings) == "3"
    # The summary's figures are the version's own, read from its logged model.
    shown = demo.version_info(client, settings, "2")
    assert shown.metrics == {"pr_auc": 0.81, "roc_auc": 0.93}
    assert "pr_auc=0.810, roc_auc=0.930" in views.held_out_line("champion", shown)


def test_champion_is_unknown_while_mlflow_does_not_answer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")
    assert demo.champion_version(down, settings) is None
