"""The ``monitor`` flow: NannyML on the champion's traffic since the last run, alerts as Prefect events."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging.loggers import PrefectLogAdapter

from adapters import registry
from adapters.prefect_url import api_url
from monitoring import events, pipeline, store
from monitoring.estimation import ChunkResult
from monitoring.policy import Alert, Retrain, VersionState, state_line
from reggaeton import names
from reggaeton.settings import Settings


@dataclass(frozen=True)
class MonitorSummary:
    """What one monitor run did."""

    model_version: str | None
    rows_read: int = 0
    chunks: int = 0
    alerts: tuple[str, ...] = ()
    mlflow_run_id: str | None = None
    state: str = ""  # the version's monitoring state after the run (``policy.state_line``)
    retrain: str = ""  # what the run asked of its retrain: requested, suppressed or none


@task(cache_policy=NO_CACHE)
def champion_reference(settings: Settings) -> tuple[str, Any] | None:
    """The champion's version and reference set, or None without a champion."""
    client = registry.connect(settings, names.MONITORING_ACCOUNT)
    version = registry.get_alias(client, settings.mlflow.model_name, names.CHAMPION)
    if version is None:
        return None
    return str(version.version), registry.load_reference(client, version)


@task(cache_policy=NO_CACHE)
def next_window(settings: Settings, stores: pipeline.Stores, model_version: str) -> pipeline.Window:
    """The version's traffic to analyse: logged since the last run."""
    return pipeline.next_window(
        stores.results, model_version, settings.monitoring.settle_s, datetime.now(UTC)
    )


@task(cache_policy=NO_CACHE)
def analyse(
    reference: Any, window: pipeline.Window, stores: pipeline.Stores, settings: Settings
) -> pipeline.Analysis:
    """NannyML CBPE, drift and realized performance per chunk, the window streamed from the log."""
    return pipeline.analyse(reference, window, stores.log, settings)


@task(cache_policy=NO_CACHE)
def decide(
    settings: Settings, stores: pipeline.Stores, window: pipeline.Window, analysis: pipeline.Analysis
) -> list[Alert]:
    """The alert policy on this run's chunks, continuing streaks from stored ones (late labels counted)."""
    history = pipeline.read_history(stores.log, stores.results, window.model_version, settings)
    return pipeline.decide(window, analysis, history, pipeline.policy_from_settings(settings))


@task(cache_policy=NO_CACHE)
def remember(
    settings: Settings,
    stores: pipeline.Stores,
    window: pipeline.Window,
    analysis: pipeline.Analysis,
    alerts: list[Alert],
) -> tuple[VersionState, Retrain]:
    """The version's state after this run (degraded until a run shows it recovered), stored and put on the
    version in MLflow (the API's /metrics reads it there); and what this run asks of its retrain."""
    state, retrain = pipeline.advance_state(
        stores.results, settings.mlflow.model_name, analysis, alerts, window, settings, datetime.now(UTC)
    )
    since = state.since.isoformat(timespec="seconds") if state.since else ""
    try:
        client = registry.connect(settings, names.MONITORING_ACCOUNT)  # EDIT on versions: tags only
        name = settings.mlflow.model_name
        registry.set_monitoring_state(client, name, window.model_version, str(state.status), since)
    except Exception as error:  # a copy for the API and the UI; the results store holds the state
        get_run_logger().warning("version %s: state not put on the version: %s", window.model_version, error)
    return state, retrain


@task(cache_policy=NO_CACHE)
def record(
    settings: Settings,
    stores: pipeline.Stores,
    window: pipeline.Window,
    analysis: pipeline.Analysis,
    alerts: list[Alert],
    state: VersionState,
) -> MonitorSummary:
    """Store results, render the plot, log the MLflow run, publish the Prefect artifact."""
    client = registry.connect(settings, names.MONITORING_ACCOUNT)
    experiment_id = registry.ensure_experiment(client, settings.mlflow.monitoring_experiment, settings)
    run_id = pipeline.start_mlflow_run(client, experiment_id, window.model_version)
    stored = pipeline.save(
        stores.results,
        settings.mlflow.model_name,
        window,
        analysis,
        alerts,
        datetime.now(UTC),
        run_id,
        settings.monitoring.history_chunks,
    )
    with pipeline.temporary_folder() as folder:
        rendered = pipeline.render(stored, pipeline.policy_from_settings(settings), Path(folder))
        pipeline.log_to_mlflow(client, run_id, stored, analysis, rendered)
        image = base64.b64encode(rendered.png.read_bytes()).decode()
    state_text = state_line(state, settings.prefect.debounce_s)
    create_markdown_artifact(
        key="monitoring-report",
        markdown=_artifact_markdown(stored.record, alerts, image, state_text),
        description=f"Monitoring of {settings.mlflow.model_name} v{window.model_version}",
    )
    return MonitorSummary(
        model_version=window.model_version,
        rows_read=analysis.rows_read,
        chunks=len(analysis.chunks),
        alerts=tuple(str(alert.kind) for alert in alerts),
        mlflow_run_id=run_id,
        state=state_text,
    )


def _artifact_markdown(run: store.RunRecord, alerts: list[Alert], png_base64: str, state: str) -> str:
    lines = [
        f"# {run.model_name} v{run.model_version}",
        f"**State**: {state}",
        "",
        f"Rows read {run.rows_read}, analysed {run.rows_analysed} in {run.chunks} chunk(s) "
        f"of {run.chunk_size}; MLflow run `{run.mlflow_run_id}` (artifacts `monitoring/`).",
        "",
        "| alert | source | metric | value | threshold |",
        "|---|---|---|---|---|",
        *(
            f"| {a.kind} | {a.source} | {a.metric} | {a.value if a.value is None else round(a.value, 4)} "
            f"| {a.threshold} |"
            for a in alerts
        ),
        "",
        f"![estimated vs realized performance and drift](data:image/png;base64,{png_base64})",
    ]
    return "\n".join(lines)


def chunk_line(chunk: ChunkResult, total: int) -> str:
    """One analysed chunk window in a line: when, how many rows, the estimate, the drifted features."""
    when = " .. ".join(f"{at:%Y-%m-%d %H:%M:%S}" if at else "?" for at in (chunk.start, chunk.end))
    estimate = chunk.estimated.get("roc_auc")
    estimated = f"{estimate.value:.3f}" if estimate is not None and estimate.value == estimate.value else "-"
    drifted = ",".join(chunk.drifted_features) or "none"
    return (
        f"chunk {chunk.index + 1}/{total} {when}: {chunk.rows} rows, estimated ROC-AUC {estimated}, "
        f"drifted: {drifted}"
    )


def _report_chunks(analysis: pipeline.Analysis) -> None:
    """The chunk windows as lines of the run's progress log (``reggaeton monitor`` shows them live)."""
    progress = get_run_logger()
    if isinstance(progress, PrefectLogAdapter):
        progress = progress.getChild(names.PROGRESS_LOG)
    for chunk in analysis.chunks:
        progress.info(chunk_line(chunk, len(analysis.chunks)))


@task(cache_policy=NO_CACHE)
def emit(settings: Settings, alerts: list[Alert], state: VersionState, retrain: Retrain) -> int:
    """Send ``degraded``/``drifted`` alerts (and a suppressed retrain) as events to the Prefect server."""
    return len(
        events.emit_alerts(
            alerts, settings.mlflow.model_name, api_url(settings), state=state, retrain=retrain
        )
    )


@flow(name="monitor")
def monitor(settings: Settings | None = None) -> MonitorSummary:
    """Monitor the champion: estimate, detect drift, store, plot, alert."""
    settings = settings or Settings()
    logger = get_run_logger()
    champion = champion_reference(settings)
    if champion is None:
        logger.warning("no %s version: nothing to monitor", names.CHAMPION)
        return MonitorSummary(model_version=None)
    version, reference = champion
    with pipeline.open_stores(settings) as stores:  # both databases once per run, disposed at its end
        window = next_window(settings, stores, version)
        analysis = analyse(reference, window, stores, settings)
        _report_chunks(analysis)
        alerts = decide(settings, stores, window, analysis)
        state, retrain = remember(settings, stores, window, analysis, alerts)
        summary = record(settings, stores, window, analysis, alerts, state)
    emit(settings, alerts, state, retrain)
    logger.info(
        "monitored v%s: %d rows, %d chunks, alerts %s; %s; retrain %s",
        version,
        summary.rows_read,
        summary.chunks,
        summary.alerts,
        summary.state,
        retrain.action,
    )
    return replace(summary, retrain=str(retrain.action))
