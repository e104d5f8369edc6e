"""The MLflow adapter against a real SQLite tracking store and registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from adapters import decisions, registry
from reggaeton import names
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.model import LOGISTIC_REGRESSION, build_pipeline
from reggaeton.schema import BASE, FEATURE_NAMES, OBSERVED_AT, PREDICTION, PROBABILITY, SOURCE, TARGET
from reggaeton.settings import Settings


def test_register_alias_and_reference_round_trip(settings: Settings) -> None:
    client = registry.connect(settings)
    data = split(synthetic_dataset(600, seed=1), 0.3, seed=1)
    pipeline = build_pipeline(LOGISTIC_REGRESSION, {"C": 1.0}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    proba = pipeline.predict_proba(features_array(data.holdout))[:, 1]

    assert registry.get_alias(client, names.MODEL_NAME, names.CHAMPION) is None
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(pipeline, data.holdout, threshold=0.4)
        registry.log_reference(registry.reference_frame(data.holdout, proba, 0.4))
    version = registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: 0.4})
    client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version.version)

    champion = registry.get_alias(client, names.MODEL_NAME, names.CHAMPION)
    assert champion is not None and champion.version == version.version
    assert champion.tags[names.Tag.THRESHOLD] == "0.4"
    reference = registry.load_reference(client, champion)
    assert list(reference.columns) == [*FEATURE_NAMES, PROBABILITY, PREDICTION, TARGET, SOURCE, OBSERVED_AT]
    np.testing.assert_allclose(reference[PROBABILITY], proba)
    # Each row's provenance survives the round trip (the gate's slices read it).
    assert (reference[SOURCE] == BASE).all() and reference[OBSERVED_AT].isna().all()
    loaded = registry.load_pipeline(names.MODEL_NAME, version.version)
    np.testing.assert_allclose(loaded.predict_proba(features_array(data.holdout))[:, 1], proba)


def test_the_registry_reads_well_in_the_mlflow_ui(settings: Settings) -> None:
    """The model says what it is; a version's description says the last decision and why; metrics are
    the logged model's (no tag per metric), and versions registered before that show their metric tags."""
    client = registry.connect(settings)
    data = split(synthetic_dataset(1000, seed=2), 0.3, seed=2)
    pipeline = build_pipeline(LOGISTIC_REGRESSION, {"C": 1.0}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_metric("pr_auc", 0.81)  # logged before the model: MLflow copies it onto the model
        info = registry.log_model(pipeline, data.holdout, threshold=0.5)
        registry.log_model_metrics(info, {"pr_auc": 0.81, "brier": 0.03}, {"family": "lr"})
    version = registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: 0.5})
    assert client.get_registered_model(names.MODEL_NAME).description == registry.MODEL_DESCRIPTION
    assert set(version.tags) == {names.Tag.THRESHOLD} and registry.logged_model_id(version) == info.model_id
    logged = client.get_logged_model(info.model_id)
    assert sorted(m.key for m in logged.metrics or []) == ["brier", "pr_auc"]  # each figure once
    assert logged.params == {"family": "lr"}
    assert registry.version_metrics(client, version) == {"pr_auc": 0.81, "brier": 0.03}

    with mlflow.start_run(experiment_id=experiment_id):
        older = registry.log_model(pipeline, data.holdout, threshold=0.5)
    prefix = names.Tag.LEGACY_METRIC_PREFIX
    legacy_tags = {names.Tag.THRESHOLD: 0.5, f"{prefix}pr_auc": 0.77, f"{prefix}f1": "n/a"}
    legacy = registry.register(client, older, names.MODEL_NAME, legacy_tags)
    # An unreadable figure is left out (and logged), not a failure to show the version.
    assert registry.version_metrics(client, legacy) == {"pr_auc": 0.77}

    stamp = {names.Tag.DECIDED_BY: "dana", names.Tag.DECIDED_AT: "2026-11-30T21:00:00+00:00"}
    decisions.tag_decision(
        client, names.MODEL_NAME, version.version, "rejected", "PR-AUC gain too small", stamp
    )
    described = client.get_model_version(names.MODEL_NAME, version.version)
    assert described.description == "rejected (2026-11-30T21:00:00+00:00, dana): PR-AUC gain too small"
    assert described.tags[names.Tag.DECISION] == "rejected"
    # The slice table follows the reason; a description past the SQL registries' 5,000 characters is cut.
    table = "### Slices\n\n" + "| a-slice | tempo >= 120 | ... |\n" * 300
    decisions.tag_decision(client, names.MODEL_NAME, version.version, "rejected", "worse", stamp, notes=table)
    described = client.get_model_version(names.MODEL_NAME, version.version)
    assert described.description.startswith("rejected (2026-11-30T21:00:00+00:00, dana): worse\n\n### Slices")
    assert len(described.description) <= decisions.DESCRIPTION_LIMIT
    assert described.description.endswith("(cut: see the run's gate/ files)")


def test_monitoring_writes_a_degraded_status_after_its_time_and_clears_the_time_after_recovery(
    tmp_path: Path,
) -> None:
    """The API reads the two tags at any moment: it never finds ``degraded`` without its ``since``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(names.MODEL_NAME)
    version = str(client.create_model_version(names.MODEL_NAME, str(tmp_path), run_id=None).version)
    seen: list[dict[str, str]] = []
    write = client.set_model_version_tag

    def observed(*args: str) -> None:  # what a reader would find after each write
        write(*args)
        seen.append(dict(client.get_model_version(names.MODEL_NAME, version).tags or {}))

    client.set_model_version_tag = observed  # type: ignore[method-assign,assignment]
    registry.set_monitoring_state(client, names.MODEL_NAME, version, "degraded", "2026-12-07T06:00:00+00:00")
    registry.set_monitoring_state(client, names.MODEL_NAME, version, "ok", "")
    status, since = names.Tag.MONITORING_STATUS, names.Tag.MONITORING_SINCE
    assert [(tags.get(status), tags.get(since)) for tags in seen] == [
        (None, "2026-12-07T06:00:00+00:00"),
        ("degraded", "2026-12-07T06:00:00+00:00"),
        ("ok", "2026-12-07T06:00:00+00:00"),
        ("ok", ""),
    ]
