"""The monitor run's steps as plain functions; ``flows/monitor.py`` wires them as Prefect tasks.

read the log window -> estimate and detect drift -> decide alerts -> store -> plot -> MLflow.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from adapters import log_window, prediction_log
from adapters.log_window import Watermark
from adapters.prediction_log import CREATED_AT, PREDICTION_ID
from monitoring import estimation, report, store
from monitoring.estimation import ChunkPlan, ChunkResult
from monitoring.policy import Alert, Policy, Results, Retrain, VersionState, advance, evaluate, judged
from reggaeton.schema import PREDICTION, PROBABILITY
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

# Under the state folder: NannyML's calculators fitted on each champion's reference (estimation.fit_monitors).
MONITORS_CACHE: Final = "monitoring-cache"


def policy_from_settings(settings: Settings) -> Policy:
    """The alert policy the settings describe."""
    section = settings.monitoring
    thresholds = {"roc_auc": section.roc_auc_threshold}
    if section.f1_threshold is not None:
        thresholds["f1"] = section.f1_threshold
    return Policy(
        thresholds=thresholds,
        consecutive_chunks=section.consecutive_chunks,
        min_rows=section.min_rows,
        min_labelled=section.min_labelled,
        min_labelled_positives=section.min_labelled_positives,
        drift_min_features=section.drift_min_features,
    )


@dataclass(frozen=True)
class Stores:
    """The two databases of one monitor run, opened once for the whole run."""

    log: Engine  # the prediction log: read only, its tables are serving's to create
    results: Engine  # the monitoring results store


@contextmanager
def open_stores(settings: Settings) -> Iterator[Stores]:
    """Open the prediction log and the results store (created or brought up to date) for one run.

    Both engines are disposed when the run ends, whether it succeeded or not.
    """
    log = prediction_log.make_engine(settings.prediction_log_url)
    try:
        results = store.connect(settings.monitoring_results_url)
        try:
            yield Stores(log=log, results=results)
        finally:
            results.dispose()
    finally:
        log.dispose()


@dataclass(frozen=True)
class Window:
    """The traffic of one model version to analyse: logged after the stored watermark, up to ``until``."""

    model_version: str
    after: Watermark | None
    until: datetime


def next_window(results: Engine, model_version: str, settle_s: float, now: datetime) -> Window:
    """The version's traffic after the stored watermark and up to ``now - settle_s``."""
    after = store.last_watermark(results, model_version)
    until = now.astimezone(UTC) - timedelta(seconds=settle_s)
    return Window(model_version=model_version, after=after, until=until)


@dataclass(frozen=True)
class Analysis:
    """What NannyML and the realized metrics found in one window."""

    plan: ChunkPlan
    chunks: list[ChunkResult]
    rows_read: int
    rows_analysed: int
    watermark: Watermark | None  # last analysed row; None when nothing was analysed
    first_at: datetime | None = None  # the window's first row (None for an empty window)
    last_at: datetime | None = None  # its last row


def plan_chunks(analysis_rows: int, reference_rows: int, settings: Settings) -> ChunkPlan:
    """The chunking the settings ask for, sized to this reference and window."""
    section = settings.monitoring
    return estimation.plan_chunks(
        analysis_rows,
        reference_rows,
        chunk_size=section.chunk_size,
        chunk_period=section.chunk_period,
        reference_chunks=section.reference_chunks,
        max_chunks=section.max_chunks,
    )


def analyse(reference: pd.DataFrame, window: Window, log: Engine, settings: Settings) -> Analysis:
    """Stream the window from the log through NannyML and the realized metrics, chunk by chunk.

    The window is counted first (its chunk plan depends on its size), then read in batches and analysed
    in slices of whole chunks: memory stays flat however many rows it holds.
    """
    section = settings.monitoring
    with log_window.open_window(
        log, window.model_version, after=window.after, until=window.until, archive=settings.archive_path
    ) as rows:
        plan = plan_chunks(rows.rows, len(reference), settings)
        if rows.rows < section.min_rows:  # a window too small to judge is kept whole for the next run
            stream = estimation.Stream()
            for _ in stream.read(rows.frames()):
                pass
        else:
            stream = estimation.estimate_stream(
                reference,
                rows.frames(),
                plan,
                cache_dir=settings.state_path / MONITORS_CACHE,
                usage_logging=section.nannyml_usage_logging,
            )
    logger.info(
        "read %d logged predictions of version %s after %s; analysed %d in %d chunks",
        stream.rows_read,
        window.model_version,
        window.after,
        stream.rows_analysed,
        len(stream.chunks),
    )
    return Analysis(
        plan=plan,
        chunks=stream.chunks,
        rows_read=stream.rows_read,
        rows_analysed=stream.rows_analysed,
        watermark=stream.watermark,
        first_at=stream.first_at,
        last_at=stream.last_at,
    )


@dataclass(frozen=True)
class History:
    """Stored chunks of the version (oldest first), with late labels counted, for the policy's streaks."""

    chunks: list[ChunkResult]
    relabelled_from: int | None = None  # position of the first chunk whose late labels changed it


def _locatable(chunk: ChunkResult) -> bool:
    """Whether a stored chunk's rows can be found again in the log (stores before first/last ids cannot)."""
    return bool(chunk.start and chunk.end and chunk.first_id and chunk.last_id)


def late_labels(
    log: Engine, results: Engine, model_version: str, limit: int, archive: Path | None = None
) -> History:
    """The latest ``limit`` stored chunks, with the labels that arrived since each was judged.

    A chunk's realized metrics are computed when it is analysed; feedback keeps arriving afterwards.
    Chunks that gained labels get their label counts and realized metrics recomputed and stored again.
    """
    stored = store.recent_stored(results, model_version, limit)
    known = [s for s in stored if _locatable(s.chunk)]
    if not known:  # nothing stored yet, or chunks from a store older than the first/last ids
        return History([s.chunk for s in stored])
    first = min(known, key=lambda s: (s.chunk.start, s.chunk.first_id)).chunk
    last = max(known, key=lambda s: (s.chunk.end, s.chunk.last_id)).chunk
    assert first.start is not None and last.end is not None
    frame = log_window.read_window(
        log, model_version, after=(first.start, ""), until=last.end, features=False, archive=archive
    )
    at = frame[CREATED_AT]
    ids = frame[PREDICTION_ID].astype(str)
    labels = frame[log_window.LABEL].to_numpy(dtype="float64")
    proba = frame[PROBABILITY].to_numpy(dtype="float64")
    predicted = frame[PREDICTION].to_numpy(dtype="int64")
    changed: list[store.StoredChunk] = []
    chunks = []
    relabelled_from = None
    for position, item in enumerate(stored):
        chunk = item.chunk
        if _locatable(chunk):
            assert chunk.start is not None and chunk.end is not None
            start, end = pd.Timestamp(chunk.start), pd.Timestamp(chunk.end)
            inside = (
                ((at > start) | ((at == start) & (ids >= chunk.first_id)))
                & ((at < end) | ((at == end) & (ids <= chunk.last_id)))
            ).to_numpy()
            chunk_labels = labels[inside]
            labelled = int((~np.isnan(chunk_labels)).sum())
            if labelled > chunk.labelled:
                chunk = replace(
                    chunk,
                    labelled=labelled,
                    labelled_positives=int(np.nansum(chunk_labels)),
                    realized=estimation.realized_metrics(chunk_labels, proba[inside], predicted[inside]),
                )
                changed.append(store.StoredChunk(item.run_id, chunk))
                relabelled_from = position if relabelled_from is None else relabelled_from
        chunks.append(chunk)
    store.update_labels(results, changed)
    if changed:
        logger.info("late labels for %d stored chunk(s) of version %s", len(changed), model_version)
    return History(chunks, relabelled_from)


def read_history(log: Engine, results: Engine, model_version: str, settings: Settings) -> History:
    """The stored chunks the policy continues streaks from, with their late labels counted."""
    section = settings.monitoring
    limit = max(section.relabel_chunks, section.consecutive_chunks - 1)
    return late_labels(log, results, model_version, limit, settings.archive_path)


def decide(window: Window, analysis: Analysis, history: History, policy: Policy) -> list[Alert]:
    """Apply the alert policy to this run's chunks (continuing streaks from stored history)."""
    start = analysis.first_at
    end = analysis.last_at or window.until
    return evaluate(
        Results(
            model_version=window.model_version,
            chunks=analysis.chunks,
            history=history.chunks,
            relabelled_from=history.relabelled_from,
            window_rows=analysis.rows_read,
            window_start=start,
            window_end=end,
        ),
        policy,
    )


def advance_state(
    results: Engine,
    model_name: str,
    analysis: Analysis,
    alerts: list[Alert],
    window: Window,
    settings: Settings,
    now: datetime,
) -> tuple[VersionState, Retrain]:
    """The version's state after this run (stored), and what the run asks of its retrain."""
    previous = store.read_state(results, model_name, window.model_version)
    policy = policy_from_settings(settings)
    judged_chunks = sum(judged(chunk, policy) for chunk in analysis.chunks)
    state, retrain = advance(
        previous, window.model_version, alerts, judged_chunks, now, settings.prefect.debounce_s
    )
    store.save_state(results, model_name, state)
    if previous is None or previous.status != state.status:
        logger.info("version %s is now %s: %s", window.model_version, state.status, state.reason)
    return state, retrain


@dataclass(frozen=True)
class Stored:
    """A saved run."""

    record: store.RunRecord
    chunks: pd.DataFrame = field(repr=False)


def save(
    results: Engine,
    model_name: str,
    window: Window,
    analysis: Analysis,
    alerts: list[Alert],
    started_at: datetime,
    mlflow_run_id: str | None,
    history_chunks: int,
) -> Stored:
    """Store the run and return it with the version's recent chunks (for the plot)."""
    record = store.RunRecord(
        run_id=uuid.uuid4().hex,
        model_name=model_name,
        model_version=window.model_version,
        started_at=started_at,
        window_start=analysis.first_at,
        window_end=analysis.chunks[-1].end if analysis.chunks else None,
        rows_read=analysis.rows_read,
        rows_analysed=analysis.rows_analysed,
        chunks=len(analysis.chunks),
        chunk_size=analysis.plan.chunk_size,
        watermark=analysis.watermark,
        alerts=",".join(sorted({str(alert.kind) for alert in alerts})),
        mlflow_run_id=mlflow_run_id,
    )
    store.save_run(results, record, analysis.chunks)
    recent = store.read_chunks(results, window.model_version, limit=len(analysis.chunks) + history_chunks)
    return Stored(record=record, chunks=recent)


def metrics_of(analysis: Analysis) -> dict[str, float]:
    """Run-level numbers for MLflow: the last chunk's values and the run's extremes."""
    metrics: dict[str, float] = {
        "rows_read": float(analysis.rows_read),
        "rows_analysed": float(analysis.rows_analysed),
        "chunks": float(len(analysis.chunks)),
    }
    if not analysis.chunks:
        return metrics
    for metric in estimation.ESTIMATED_METRICS:
        values = [c.estimated[metric].value for c in analysis.chunks if metric in c.estimated]
        if values:
            metrics[f"estimated_{metric}_min"] = min(values)
            metrics[f"estimated_{metric}_last"] = values[-1]
        realized = [c.realized[metric] for c in analysis.chunks if metric in c.realized]
        if realized:
            metrics[f"realized_{metric}_min"] = min(realized)
    metrics["drifted_chunks"] = float(
        sum(c.multivariate_drift or bool(c.drifted_features) for c in analysis.chunks)
    )
    errors = [c.reconstruction_error for c in analysis.chunks if c.reconstruction_error is not None]
    if errors:
        metrics["reconstruction_error_max"] = max(errors)
    return metrics


def chunk_metric_steps(analysis: Analysis, step_offset: int) -> list[tuple[str, float, int]]:
    """Per-chunk metrics as (key, value, step) for MLflow's metric history."""
    rows: list[tuple[str, float, int]] = []
    for position, chunk in enumerate(analysis.chunks):
        step = step_offset + position
        for metric, estimate in chunk.estimated.items():
            rows.append((f"chunk_estimated_{metric}", estimate.value, step))
        for metric, value in chunk.realized.items():
            rows.append((f"chunk_realized_{metric}", value, step))
        if chunk.reconstruction_error is not None:
            rows.append(("chunk_reconstruction_error", chunk.reconstruction_error, step))
        rows.append(("chunk_drifted_features", float(len(chunk.drifted_features)), step))
    return rows


def render(stored: Stored, policy: Policy, folder: Path) -> report.Report:
    """Plot the run's chunks with some history before them."""
    title = (
        f"{stored.record.model_name} v{stored.record.model_version}: estimated vs realized performance, drift"
    )
    return report.render(stored.chunks, policy.thresholds, title, folder)


def start_mlflow_run(client: Any, experiment_id: str, model_version: str) -> str:
    """Create the MLflow run that records this monitor run; return its id."""
    run = client.create_run(experiment_id, run_name=f"monitor-v{model_version}")
    return str(run.info.run_id)


def log_to_mlflow(
    client: Any, run_id: str, stored: Stored, analysis: Analysis, rendered: report.Report
) -> None:
    """Params, summary and per-chunk metrics, and the plot (PNG + HTML) on the monitoring run."""
    from mlflow.entities import Metric, Param, RunTag

    record = stored.record
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    params = {
        "model_name": record.model_name,
        "model_version": record.model_version,
        "chunk_size": str(analysis.plan.chunk_size),
        "chunk_period": str(analysis.plan.chunk_period),
        "reference_chunk_size": str(analysis.plan.reference_chunk_size),
        "results_run_id": record.run_id,
    }
    metrics = [Metric(k, v, now_ms, 0) for k, v in metrics_of(analysis).items()]
    metrics += [Metric(k, v, now_ms, step) for k, v, step in chunk_metric_steps(analysis, 0)]
    tags = [RunTag("reggaeton.alerts", record.alerts or "none")]
    for start in range(0, len(metrics), 1000):  # MLflow's per-call limit
        client.log_batch(
            run_id,
            metrics=metrics[start : start + 1000],
            params=[Param(k, v) for k, v in params.items()] if start == 0 else [],
            tags=tags if start == 0 else [],
        )
    for path in (rendered.png, rendered.html):
        client.log_artifact(run_id, str(path), artifact_path="monitoring")
    client.set_terminated(run_id)


def temporary_folder() -> tempfile.TemporaryDirectory[str]:
    """A scratch folder for the rendered plot."""
    return tempfile.TemporaryDirectory(prefix="reggaeton-monitor-")
