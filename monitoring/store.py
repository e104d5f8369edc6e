"""The monitoring results store: one row per run (with the log watermark) and one row per chunk.

SQLAlchemy Core on ``settings.monitoring_results_url`` (a SQLite file by default), so people can query
it directly, e.g. ``SELECT * FROM monitoring_chunks WHERE model_version = '3' ORDER BY chunk_start``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
)

from adapters.prediction_log import make_engine
from monitoring.estimation import ESTIMATED_METRICS, ChunkResult, Estimate
from monitoring.policy import Status, VersionState

metadata: Final = MetaData()

# Chunk columns read elsewhere (the plot, people's queries): named once, here.
CHUNK_START: Final = "chunk_start"
ROWS: Final = "rows"
LABELLED: Final = "labelled"
RECONSTRUCTION_ERROR: Final = "reconstruction_error"
RECONSTRUCTION_THRESHOLD: Final = "reconstruction_threshold"
DRIFTED_FEATURES: Final = "drifted_features"
LOWER: Final = "lower"  # the bounds of a CBPE estimate
UPPER: Final = "upper"


def estimated_column(metric: str, bound: str | None = None) -> str:
    """The chunk column of a metric's CBPE estimate, or of its ``LOWER`` or ``UPPER`` bound."""
    return f"estimated_{metric}_{bound}" if bound else f"estimated_{metric}"


def realized_column(metric: str) -> str:
    """The chunk column of a metric's realized value (computed where labels arrived)."""
    return f"realized_{metric}"


runs: Final = Table(
    "monitoring_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(50), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("window_start", DateTime(timezone=True)),
    Column("window_end", DateTime(timezone=True)),
    Column("rows_read", Integer, nullable=False),
    Column("rows_analysed", Integer, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("chunk_size", Integer),
    # The last log row analysed: the next run reads strictly after (created_at, id).
    Column("watermark_at", DateTime(timezone=True)),
    Column("watermark_id", String(36)),
    Column("alerts", String(500), nullable=False, default=""),
    Column("mlflow_run_id", String(64)),
    Index("ix_monitoring_runs_version_started", "model_version", "started_at"),
)

_ESTIMATE_COLUMNS = [
    Column(estimated_column(metric, bound), Float)
    for metric in ESTIMATED_METRICS
    for bound in (None, LOWER, UPPER)
]

chunks: Final = Table(
    "monitoring_chunks",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("chunk_index", Integer, primary_key=True),
    Column("model_version", String(50), nullable=False),
    Column(CHUNK_START, DateTime(timezone=True)),
    Column("chunk_end", DateTime(timezone=True)),
    Column(ROWS, Integer, nullable=False),
    Column(LABELLED, Integer, nullable=False),
    Column("labelled_positives", Integer, nullable=False),
    *_ESTIMATE_COLUMNS,
    *(Column(realized_column(metric), Float) for metric in ESTIMATED_METRICS),
    Column(RECONSTRUCTION_ERROR, Float),
    Column(RECONSTRUCTION_THRESHOLD, Float),
    Column("multivariate_drift", Boolean, nullable=False),
    Column(DRIFTED_FEATURES, String(500), nullable=False),
    # The chunk's first and last prediction ids, so late labels can be matched to it exactly.
    Column("first_id", String(36)),
    Column("last_id", String(36)),
    Index("ix_monitoring_chunks_version_start", "model_version", CHUNK_START),
)
# Columns added after the first release: `connect` adds them to an older store.
_ADDED_COLUMNS: Final = ("first_id", "last_id")

# One row per monitored version: its state between runs (``policy.advance``).
versions: Final = Table(
    "monitoring_versions",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("model_version", String(50), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("since", DateTime(timezone=True)),
    Column("reason", String(1000), nullable=False, default=""),
    Column("retrain_requested_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)


@dataclass(frozen=True)
class RunRecord:
    """One monitor run as stored."""

    run_id: str
    model_name: str
    model_version: str
    started_at: datetime
    window_start: datetime | None
    window_end: datetime | None
    rows_read: int
    rows_analysed: int
    chunks: int
    chunk_size: int | None
    watermark: tuple[datetime, str] | None
    alerts: str = ""
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class StoredChunk:
    """A stored chunk with the key of its row."""

    run_id: str
    chunk: ChunkResult


def connect(url: str) -> Engine:
    """An engine on the results store with its tables created, or brought up to date (idempotent)."""
    engine = make_engine(url)
    metadata.create_all(engine)
    present = {column["name"] for column in inspect(engine).get_columns(chunks.name)}
    missing = [name for name in _ADDED_COLUMNS if name not in present]
    if missing:
        with engine.begin() as connection:
            for name in missing:
                column = chunks.c[name]
                kind = column.type.compile(dialect=engine.dialect)
                connection.execute(text(f"ALTER TABLE {chunks.name} ADD COLUMN {name} {kind}"))
    return engine


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def last_watermark(engine: Engine, model_version: str) -> tuple[datetime, str] | None:
    """The watermark of the latest run for a version that analysed anything, else None."""
    query = (
        select(runs.c.watermark_at, runs.c.watermark_id)
        .where(runs.c.model_version == model_version, runs.c.watermark_at.is_not(None))
        .order_by(runs.c.watermark_at.desc(), runs.c.watermark_id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    at = _utc(row.watermark_at)
    assert at is not None
    return at, str(row.watermark_id)


def _chunk_row(run_id: str, version: str, chunk: ChunkResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run_id,
        "chunk_index": chunk.index,
        "model_version": version,
        CHUNK_START: _utc(chunk.start),
        "chunk_end": _utc(chunk.end),
        ROWS: chunk.rows,
        LABELLED: chunk.labelled,
        "labelled_positives": chunk.labelled_positives,
        RECONSTRUCTION_ERROR: chunk.reconstruction_error,
        RECONSTRUCTION_THRESHOLD: chunk.reconstruction_threshold,
        "multivariate_drift": chunk.multivariate_drift,
        DRIFTED_FEATURES: ",".join(chunk.drifted_features),
        "first_id": chunk.first_id,
        "last_id": chunk.last_id,
    }
    for metric in ESTIMATED_METRICS:
        estimate = chunk.estimated.get(metric)
        row[estimated_column(metric)] = estimate.value if estimate else None
        row[estimated_column(metric, LOWER)] = estimate.lower if estimate else None
        row[estimated_column(metric, UPPER)] = estimate.upper if estimate else None
        row[realized_column(metric)] = chunk.realized.get(metric)
    return row


def save_run(engine: Engine, record: RunRecord, results: Sequence[ChunkResult]) -> None:
    """Store a run and its chunks in one transaction."""
    watermark_at, watermark_id = record.watermark if record.watermark else (None, None)
    with engine.begin() as connection:
        connection.execute(
            insert(runs).values(
                run_id=record.run_id,
                model_name=record.model_name,
                model_version=record.model_version,
                started_at=_utc(record.started_at),
                window_start=_utc(record.window_start),
                window_end=_utc(record.window_end),
                rows_read=record.rows_read,
                rows_analysed=record.rows_analysed,
                chunks=record.chunks,
                chunk_size=record.chunk_size,
                watermark_at=_utc(watermark_at),
                watermark_id=watermark_id,
                alerts=record.alerts,
                mlflow_run_id=record.mlflow_run_id,
            )
        )
        if results:
            connection.execute(
                insert(chunks), [_chunk_row(record.run_id, record.model_version, c) for c in results]
            )


def _nan_to_none(value: Any) -> Any:
    return None if value is None or pd.isna(value) else value


def _chunk_from_row(row: Any) -> ChunkResult:
    estimated = {}
    realized = {}
    for metric in ESTIMATED_METRICS:
        value = _nan_to_none(row[estimated_column(metric)])
        if value is not None:
            estimated[metric] = Estimate(
                float(value),
                float(row[estimated_column(metric, LOWER)]),
                float(row[estimated_column(metric, UPPER)]),
            )
        real = _nan_to_none(row[realized_column(metric)])
        if real is not None:
            realized[metric] = float(real)
    features = str(row[DRIFTED_FEATURES])
    return ChunkResult(
        index=int(row["chunk_index"]),
        start=_utc(row[CHUNK_START]),
        end=_utc(row["chunk_end"]),
        rows=int(row[ROWS]),
        labelled=int(row[LABELLED]),
        labelled_positives=int(row["labelled_positives"]),
        estimated=estimated,
        realized=realized,
        drifted_features=tuple(features.split(",")) if features else (),
        reconstruction_error=_nan_to_none(row[RECONSTRUCTION_ERROR]),
        reconstruction_threshold=_nan_to_none(row[RECONSTRUCTION_THRESHOLD]),
        multivariate_drift=bool(row["multivariate_drift"]),
        first_id=_nan_to_none(row["first_id"]),
        last_id=_nan_to_none(row["last_id"]),
    )


def recent_stored(engine: Engine, model_version: str, limit: int) -> list[StoredChunk]:
    """The latest ``limit`` stored chunks of a version with their keys, oldest first."""
    if limit <= 0:
        return []
    query = (
        select(chunks)
        .join(runs, runs.c.run_id == chunks.c.run_id)
        .where(chunks.c.model_version == model_version)
        .order_by(runs.c.started_at.desc(), chunks.c.chunk_index.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [StoredChunk(str(row["run_id"]), _chunk_from_row(row)) for row in reversed(rows)]


def update_labels(engine: Engine, updated: Sequence[StoredChunk]) -> None:
    """Store the label counts and realized metrics of chunks whose late labels arrived."""
    if not updated:
        return
    with engine.begin() as connection:
        for stored in updated:
            chunk = stored.chunk
            connection.execute(
                update(chunks)
                .where(chunks.c.run_id == stored.run_id, chunks.c.chunk_index == chunk.index)
                .values(
                    labelled=chunk.labelled,
                    labelled_positives=chunk.labelled_positives,
                    **{realized_column(metric): chunk.realized.get(metric) for metric in ESTIMATED_METRICS},
                )
            )


def read_chunks(engine: Engine, model_version: str | None = None, limit: int | None = None) -> pd.DataFrame:
    """The stored chunks (of one version; the latest ``limit``), in time order, as a frame."""
    query = select(chunks, runs.c.started_at).join(runs, runs.c.run_id == chunks.c.run_id)
    if model_version is not None:
        query = query.where(chunks.c.model_version == model_version)
    query = query.order_by(runs.c.started_at.desc(), chunks.c.chunk_index.desc())
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return pd.DataFrame(list(reversed(rows)))


def read_runs(engine: Engine, model_version: str | None = None) -> pd.DataFrame:
    """All stored runs (of one version), oldest first."""
    query = select(runs).order_by(runs.c.started_at)
    if model_version is not None:
        query = query.where(runs.c.model_version == model_version)
    with engine.connect() as connection:
        return pd.DataFrame(connection.execute(query).mappings().all())


def read_state(engine: Engine, model_name: str, model_version: str) -> VersionState | None:
    """A version's stored state, or None when it was never monitored."""
    query = select(versions).where(
        versions.c.model_name == model_name, versions.c.model_version == model_version
    )
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    if row is None:
        return None
    return VersionState(
        model_version=str(row["model_version"]),
        status=Status(row["status"]),
        since=_utc(row["since"]),
        reason=str(row["reason"] or ""),
        retrain_requested_at=_utc(row["retrain_requested_at"]),
        updated_at=_utc(row["updated_at"]),
    )


def save_state(engine: Engine, model_name: str, state: VersionState) -> None:
    """Store a version's state (replacing the previous one)."""
    key = (versions.c.model_name == model_name) & (versions.c.model_version == state.model_version)
    with engine.begin() as connection:
        connection.execute(delete(versions).where(key))
        connection.execute(
            insert(versions).values(
                model_name=model_name,
                model_version=state.model_version,
                status=str(state.status),
                since=_utc(state.since),
                reason=state.reason[:1000],
                retrain_requested_at=_utc(state.retrain_requested_at),
                updated_at=_utc(state.updated_at),
            )
        )
