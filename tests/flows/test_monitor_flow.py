"""The monitor flow end to end: a registered champion, drifted traffic in a real SQLite log, a real
Prefect server; events are read back through the Prefect API with their payload."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import pytest
from sqlalchemy import inspect

from adapters import prediction_log, registry
from flows.monitor import monitor
from monitoring import events, simulate, store
from monitoring.policy import Alert, AlertKind
from reggaeton import names
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.metrics import best_f1_threshold
from reggaeton.model import RANDOM_FOREST, build_pipeline
from reggaeton.schema import TARGET
from reggaeton.settings import Settings

RESOURCE_ID = f"{names.Event.RESOURCE_PREFIX}.{names.MODEL_NAME}"


def read_events(
    event_name: str, expected: int, timeout_s: float = 60.0, version: str | None = None
) -> list[Any]:
    """Events of one name for our model (of one version), read back from the server (polled: the server
    persists async; other tests of the session send events of the same name and model)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    query = EventFilter(
        event=EventNameFilter(name=[event_name]), resource=EventResourceFilter(id=[RESOURCE_ID])
    )
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            found = client.read_events(filter=query, limit=50).events
        if version is not None:
            found = [event for event in found if event.payload.get("model_version") == version]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def register_champion(settings: Settings) -> tuple[str, Any, float]:
    """Fit a small random forest on synthetic data and register it as the champion with its reference."""
    data = split(synthetic_dataset(4000, seed=3), 0.5, seed=3)
    pipeline = build_pipeline(RANDOM_FOREST, {"n_estimators": 100, "min_samples_leaf": 3}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    proba = pipeline.predict_proba(features_array(data.holdout))[:, 1]
    threshold = best_f1_threshold(data.holdout[TARGET].to_numpy(), proba)
    client = registry.connect(settings)
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(pipeline, data.holdout, threshold)
        registry.log_reference(registry.reference_frame(data.holdout, proba, threshold))
    version = registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: threshold})
    client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version.version)
    return str(version.version), pipeline, threshold


def test_drifted_alert_reaches_the_prefect_server_with_its_payload(prefect_api_url: str) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    alert = Alert(
        AlertKind.DRIFTED,
        "7",
        metric="drifted_features",
        value=6.0,
        threshold=5.0,
        window_start=start,
        window_end=start + timedelta(hours=1),
        source="drift",
        chunks=2,
        details={"features": ["energy", "tempo"]},
    )
    ignored = Alert(AlertKind.INSUFFICIENT_DATA, "7", "rows", 10.0, 200.0, None, None, "window")
    sent = events.emit_alerts([alert, ignored], names.MODEL_NAME, prefect_api_url)
    assert len(sent) == 1
    found = [e for e in read_events(names.Event.DRIFTED, 1) if e.id == sent[0].id]
    assert len(found) == 1
    payload = found[0].payload
    assert (payload["metric"], payload["value"], payload["threshold"]) == ("drifted_features", 6.0, 5.0)
    assert payload["model_version"] == "7"
    assert payload["window"]["start"] == start.isoformat() and payload["window"]["chunks"] == 2
    assert found[0].resource.id == RESOURCE_ID and found[0].resource["reggaeton.model.version"] == "7"


@pytest.mark.slow
def test_monitor_flow_on_drifted_traffic_emits_degraded(tmp_path: Any, prefect_api_url: str) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        prefect={"api_url": prefect_api_url},
        monitoring={"settle_s": 0.0},
    )
    assert monitor(settings).model_version is None  # no champion yet: nothing to do, no failure

    version, pipeline, threshold = register_champion(settings)
    log = prediction_log.make_engine(settings.prediction_log_url)
    # Serving has not started yet: the log has no tables, and monitoring leaves them to serving.
    first = monitor(settings)
    assert (first.model_version, first.rows_read, first.alerts) == (version, 0, ("insufficient data",))
    assert inspect(log).get_table_names() == []
    prediction_log.create_tables(log)
    songs = simulate.score(simulate.traffic("drift", 1500, seed=11), pipeline, threshold)
    simulate.log_traffic(
        log,
        songs,
        version,
        start=datetime.now(UTC) - timedelta(hours=2),
        interval=timedelta(seconds=1),
        feedback_fraction=0.4,
        seed=11,
    )

    summary = monitor(settings)
    assert summary.model_version == version and summary.rows_read == 1500 and summary.chunks == 3
    assert "degraded" in summary.alerts
    assert summary.state.startswith(f"version {version}: DEGRADED since ")
    assert summary.retrain == "requested"

    degraded = read_events(names.Event.DEGRADED, 1, version=version)
    assert degraded, "no degraded event on the Prefect server"
    payload = degraded[0].payload
    assert payload["value"] < payload["threshold"] and payload["metric"] in ("roc_auc", "f1")
    assert payload["window"]["start"] and payload["window"]["end"]
    assert payload["retrain"]["action"] == "requested" and payload["degraded_since"]

    results = store.connect(settings.monitoring_results_url)
    runs = store.read_runs(results, version)
    assert len(runs) == 2 or len(runs) == 1
    assert runs["rows_analysed"].iloc[-1] == 1500 and runs["mlflow_run_id"].iloc[-1] == summary.mlflow_run_id
    client = registry.connect(settings)
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.metrics["chunks"] == 3 and "estimated_roc_auc_min" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(summary.mlflow_run_id, "monitoring")}
    assert artifacts == {"monitoring/monitoring.png", "monitoring/monitoring.html"}

    # The watermark moved: a second run finds nothing new and says so instead of alerting...
    again = monitor(settings)
    assert again.rows_read == 0 and again.alerts == ("insufficient data",)
    # ...and the version stays degraded: in the results store, on the version (the API's /metrics).
    assert again.state.startswith(f"version {version}: DEGRADED since ") and again.retrain == "none"
    tags = client.get_model_version(names.MODEL_NAME, version).tags
    assert tags[names.Tag.MONITORING_STATUS] == "degraded" and tags[names.Tag.MONITORING_SINCE]
