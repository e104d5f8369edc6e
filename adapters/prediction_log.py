"""The prediction log's storage contract: tables written by serving, read by monitoring and training.

SQLAlchemy Core tables so the same code runs on a SQLite file (default) or Postgres (containers).
``predictions`` has one row per answered request (the id is the key), with the route that answered it
(``champion`` or ``canary``); ``feedback`` one row per prediction id whose true label arrived later;
``shadow_batches`` the answers a shadow model gave to the same requests, a batch per row (best effort);
``live_stats`` each API replica's counts of a challenger's live answers (errors, latency), for the live
gate; ``log_archive_parts`` the Parquet files older rows were archived to (see ``adapters.log_archive``).

The schema changes through migrations (``adapters/log_migrations``): ``create_tables`` upgrades any log,
a v1 database with rows included, to ``SCHEMA_REVISION``. The tables below describe that revision; a
test checks that the migrations produce exactly them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import (
    CTE,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    create_engine,
    event,
    func,
    inspect,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from reggaeton.ids import time_ordered_ids
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY, TARGET
from reggaeton.settings import with_postgres_timeouts

if TYPE_CHECKING:  # pandas is imported by the readers: the API server, which only writes, starts without it
    import pandas as pd

logger = logging.getLogger(__name__)

metadata: Final = MetaData()

# The newest migration (adapters/log_migrations/versions); a test ties the two.
SCHEMA_REVISION: Final = "0004"

PREDICTION_ID: Final = "id"
CREATED_AT: Final = "created_at"
MODEL_NAME: Final = "model_name"
MODEL_VERSION: Final = "model_version"
ROUTE: Final = "route"
# Who answered a request: the champion, or the challenger on a canary share of the traffic.
ROUTE_CHAMPION: Final = "champion"
ROUTE_CANARY: Final = "canary"
ROUTES: Final = (ROUTE_CHAMPION, ROUTE_CANARY)

predictions: Final = Table(
    "predictions",
    metadata,
    Column(PREDICTION_ID, String(36), primary_key=True),
    Column(CREATED_AT, DateTime(timezone=True), nullable=False),
    Column(MODEL_NAME, String(200), nullable=False),
    Column(MODEL_VERSION, String(50), nullable=False),
    *(Column(name, Float, nullable=False) for name in FEATURE_NAMES),
    Column(PROBABILITY, Float, nullable=False),
    Column(PREDICTION, Integer, nullable=False),
    Column(ROUTE, String(16), nullable=False, server_default=ROUTE_CHAMPION),
    CheckConstraint(f"{ROUTE} IN ('{ROUTE_CHAMPION}', '{ROUTE_CANARY}')", name="ck_predictions_route"),
    # The monitor's window: one version's champion rows in (created_at, id) order.
    Index("ix_predictions_version_route_created", MODEL_VERSION, ROUTE, CREATED_AT, PREDICTION_ID),
    Index("ix_predictions_created", CREATED_AT),  # retention: rows older than a cutoff
)

FEEDBACK_PREDICTION_ID: Final = "prediction_id"
feedback: Final = Table(
    "feedback",
    metadata,
    Column(FEEDBACK_PREDICTION_ID, String(36), ForeignKey("predictions.id"), primary_key=True),
    Column("label", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_feedback_received", "received_at"),
)

# Shadow answers: one row per batch a shadow model scored, its answers as one JSON array of
# ``[prediction id, probability, prediction]`` (the ids are the champion rows' ids). One insert per batch,
# not per answer: a row per answer, with its key and time indexes, cost the API server ~3 us of CPU per
# request at 100 % shadow (issue 27). No foreign key: written best effort, outside the journal, possibly
# before the champion's rows are in. ``created_at``: the newest of its requests (each answer's own time is
# its champion row's); retention moves a batch when that is past the cutoff. Read the answers one per row
# with :func:`shadow_answers`.
SHADOW_BATCH_ID: Final = "id"
SHADOW_ROWS: Final = "rows"
SHADOW_ANSWERS: Final = "answers"
SHADOW_BATCH: Final = "batch_id"  # an answer's batch, as shadow_answers names it
shadow_batches: Final = Table(
    "shadow_batches",
    metadata,
    # A UUIDv7 stamped with the batch's time, made by the writer: no sequence to share between replicas
    # (or to grant to the API's database role).
    Column(SHADOW_BATCH_ID, String(36), primary_key=True),
    Column(MODEL_VERSION, String(50), nullable=False),
    Column(MODEL_NAME, String(200), nullable=False),
    Column(CREATED_AT, DateTime(timezone=True), nullable=False),
    Column(SHADOW_ROWS, Integer, nullable=False),
    Column(SHADOW_ANSWERS, Text, nullable=False),
    Index("ix_shadow_batches_created", CREATED_AT),
)


def encode_answers(ids: Sequence[str], probabilities: Sequence[float], labels: Sequence[int]) -> bytes:
    """Answers as ``shadow_batches.answers`` holds them: a JSON array of ``[id, probability, prediction]``.

    Floats are written in their shortest exact form, so they read back bit for bit.
    """
    return orjson.dumps(list(zip(ids, probabilities, labels, strict=True)))


def shadow_batch_row(
    model_version: str, model_name: str, created_at: datetime, rows: int, answers: str
) -> dict[str, Any]:
    """A ``shadow_batches`` row: ``rows`` answers already encoded (:func:`encode_answers`)."""
    (batch_id,) = time_ordered_ids(1, int(created_at.timestamp() * 1000))
    return {
        SHADOW_BATCH_ID: batch_id,
        MODEL_VERSION: model_version,
        MODEL_NAME: model_name,
        CREATED_AT: created_at,
        SHADOW_ROWS: rows,
        SHADOW_ANSWERS: answers,
    }


def shadow_batch(
    model_version: str, model_name: str, created_at: datetime, answers: Sequence[tuple[str, float, int]]
) -> dict[str, Any]:
    """A ``shadow_batches`` row holding these ``(prediction id, probability, prediction)`` answers."""
    ids, probabilities, labels = zip(*answers, strict=True) if answers else ((), (), ())
    encoded = encode_answers(ids, probabilities, labels).decode()
    return shadow_batch_row(model_version, model_name, created_at, len(answers), encoded)


def shadow_answers(dialect: str, since: datetime | None = None) -> CTE:
    """The shadow answers one per row: prediction id, batch id, version, model name, probability, prediction.

    Args:
        dialect: The log's SQL dialect (``engine.dialect.name``): SQLite's ``json_each`` or Postgres's
            ``jsonb_array_elements`` unnests the batches.
        since: Only batches holding requests answered at or after this time.
    """
    batches = shadow_batches.c
    if dialect == "postgresql":
        document: Any = cast(batches[SHADOW_ANSWERS], JSONB)
        answers: Any = func.jsonb_array_elements(document).table_valued("value").lateral("answer")
    else:
        answers = func.json_each(batches[SHADOW_ANSWERS]).table_valued("value").alias("answer")
    item = answers.c.value
    query = select(
        item.op("->>")(0).label(FEEDBACK_PREDICTION_ID),
        batches[SHADOW_BATCH_ID].label(SHADOW_BATCH),
        batches[MODEL_VERSION],
        batches[MODEL_NAME],
        cast(item.op("->>")(1), Float).label(PROBABILITY),
        cast(item.op("->>")(2), Integer).label(PREDICTION),
    ).select_from(shadow_batches.join(answers, true()))
    if since is not None:
        query = query.where(batches[CREATED_AT] >= _utc(since))
    # Materialised once per query: joined as a plain subquery, SQLite unnested every batch again for each
    # row it was joined with (quadratic: 10,000 requests took 30 s to pair).
    return query.cte("shadow_answers").prefix_with("MATERIALIZED")


# What each API replica saw of a challenger's live answers, one row per replica, role, version and stats
# interval (``LiveSettings.stats_interval_s``), written best effort like the shadow rows. ``role``:
# ``shadow`` (a model scoring requests another answered: ``attempts`` rows sent to it, ``rows`` answered
# validly, errors in rows, ``latency_sum_s`` its model calls' time), ``canary`` (requests the challenger
# was chosen to answer: errors are requests the champion answered instead) or ``champion`` (requests it
# answered while a challenger was live: the canary's latency baseline), ``latency_sum_s`` their answers'.
STATS_SHADOW: Final = "shadow"
STATS_CANARY: Final = "canary"
STATS_CHAMPION: Final = "champion"
STATS_ROLES: Final = (STATS_SHADOW, STATS_CANARY, STATS_CHAMPION)
live_stats: Final = Table(
    "live_stats",
    metadata,
    Column("replica", String(200), primary_key=True),
    Column("role", String(16), primary_key=True),
    Column(MODEL_VERSION, String(50), primary_key=True),
    Column("window_start", DateTime(timezone=True), primary_key=True),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column(MODEL_NAME, String(200), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("raised", Integer, nullable=False),
    Column("timeouts", Integer, nullable=False),
    Column("invalid", Integer, nullable=False),
    Column("shed", Integer, nullable=False),
    Column("latency_sum_s", Float, nullable=False),
    Index("ix_live_stats_version_end", MODEL_VERSION, "window_end"),
)

# The archive's manifest: one row per Parquet file written by the retention flow. ``deleted_at`` is set
# in the transaction that deletes the file's rows from the live table: a file without it was interrupted.
archive_parts: Final = Table(
    "log_archive_parts",
    metadata,
    Column("part", String(400), primary_key=True),  # path under the archive folder
    Column("source", String(64), nullable=False),  # the live table the rows came from
    Column("rows", Integer, nullable=False),
    Column("first_created_at", DateTime(timezone=True), nullable=False),
    Column("last_created_at", DateTime(timezone=True), nullable=False),
    Column("cutoff", DateTime(timezone=True), nullable=False),  # every row archived was older than this
    Column("written_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
)


def missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite file that does not exist yet (connecting would create it, empty)."""
    return url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()


def make_engine(url: str) -> Engine:
    """An engine for the log; SQLite gets WAL mode so readers never block the writer.

    Postgres connections get libpq's timeouts (``settings.with_postgres_timeouts``), so an unreachable
    server fails an operation within seconds instead of hanging it.
    """
    engine = create_engine(with_postgres_timeouts(url), pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


def _revision(engine: Engine) -> str | None:
    """The log's migration revision; None for a database without the version table (empty, or v1)."""
    from adapters.log_migrations import VERSION_TABLE  # a constant: Alembic itself is not imported

    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            return connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar()
    except (OperationalError, ProgrammingError):  # being created by another process right now
        return None


_UPGRADE_DEADLINE_S: Final = 600.0


def create_tables(engine: Engine) -> None:
    """Bring the log to ``SCHEMA_REVISION``: create it, or upgrade an older one in place (rows kept).

    The one entry point for every process that opens the log. A log already current costs one query
    (Alembic is not even imported: the API's start-up). Otherwise the migrations run under a lock
    (``log_migrations.upgrade``), so API replicas starting together on one database upgrade it once; a
    SQLite writer waiting longer than its busy timeout for another's upgrade tries again.
    """
    if _revision(engine) == SCHEMA_REVISION:
        return
    from adapters import log_migrations

    deadline = time.monotonic() + _UPGRADE_DEADLINE_S
    while True:
        try:
            log_migrations.upgrade(engine)
            return
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            # Another process created or upgraded the tables first (a lock-less race on a fresh
            # database, or SQLite's lock held past the busy timeout): look again.
            if _revision(engine) == SCHEMA_REVISION:
                return
            if time.monotonic() > deadline or not _retryable(exc):
                raise
            logger.info("prediction log being upgraded by another process; waiting: %s", exc)
            time.sleep(0.5)


def _retryable(exc: Exception) -> bool:
    """Whether a failed upgrade met another process's (SQLite: locked; else: created the same objects)."""
    if isinstance(exc, OperationalError):
        return "locked" in str(exc).lower()
    return True


def log_exists(engine: Engine) -> bool:
    """Whether the log has tables; one that does is brought to ``SCHEMA_REVISION`` first.

    Readers call this: a log serving has not written to yet reads as empty (creating it is serving's
    job), and a log an older API wrote is upgraded before being read with today's columns.
    """
    if _revision(engine) == SCHEMA_REVISION:
        return True
    if not inspect(engine).has_table(predictions.name):
        return False
    create_tables(engine)
    return True


def _utc(value: datetime) -> datetime:
    """A timestamp read back as UTC (SQLite returns naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def archived_before(connection: Connection) -> datetime | None:
    """The cutoff of the newest finished archive run: predictions older than it left the live log.

    None when nothing was ever archived. (A row older than the cutoff can still be live: one written
    late from a spool; the next retention run archives it.)
    """
    cutoff = connection.execute(
        select(func.max(archive_parts.c.cutoff)).where(
            archive_parts.c.source == predictions.name, archive_parts.c.deleted_at.is_not(None)
        )
    ).scalar()
    return None if cutoff is None else _utc(cutoff)


def labelled_traffic(engine: Engine) -> pd.DataFrame:
    """Logged predictions whose true label arrived, oldest first.

    Columns: ``id``, ``created_at``, ``model_version``, the seven features, ``probability``,
    ``prediction`` and the true label as the target column. Empty (same columns) when the log has
    no tables yet or no feedback.
    """
    import pandas as pd

    columns = [
        predictions.c[PREDICTION_ID],
        predictions.c[CREATED_AT],
        predictions.c[MODEL_VERSION],
        *(predictions.c[name] for name in FEATURE_NAMES),
        predictions.c[PROBABILITY],
        predictions.c[PREDICTION],
        feedback.c.label.label(TARGET),
    ]
    names = [column.name for column in columns]
    if not log_exists(engine):
        return pd.DataFrame(columns=names)
    query = (
        select(*columns)
        .join(feedback, feedback.c.prediction_id == predictions.c[PREDICTION_ID])
        .order_by(predictions.c[CREATED_AT], predictions.c[PREDICTION_ID])
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return pd.DataFrame(rows, columns=names)
