"""The prediction log's storage contract: tables written by serving, read by monitoring and training.

SQLAlchemy Core tables so the same code runs on a SQLite file (default) or Postgres (containers).
``predictions`` has one row per served prediction; ``feedback`` one row per prediction id whose true
label arrived later.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    create_engine,
    event,
    inspect,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.exc import IntegrityError, ProgrammingError

from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY, TARGET
from reggaeton.settings import with_postgres_timeouts

if TYPE_CHECKING:  # pandas is imported by the readers: the API server, which only writes, starts without it
    import pandas as pd

metadata: Final = MetaData()

PREDICTION_ID: Final = "id"
CREATED_AT: Final = "created_at"
MODEL_NAME: Final = "model_name"
MODEL_VERSION: Final = "model_version"

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
    Index("ix_predictions_version_created", MODEL_VERSION, CREATED_AT),
)

feedback: Final = Table(
    "feedback",
    metadata,
    Column("prediction_id", String(36), ForeignKey("predictions.id"), primary_key=True),
    Column("label", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


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


def create_tables(engine: Engine) -> None:
    """Create the log's tables if they do not exist (idempotent, also when several processes start at once).

    API replicas starting together on a fresh database race to create the tables: Postgres refuses the
    loser's ``CREATE TABLE`` (a duplicate type or relation). By then the tables exist, so the second
    pass finds them and creates nothing.
    """
    try:
        metadata.create_all(engine)
    except (IntegrityError, ProgrammingError):
        metadata.create_all(engine)


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
    table_names = set(inspect(engine).get_table_names())
    if not {predictions.name, feedback.name} <= table_names:
        return pd.DataFrame(columns=names)
    query = (
        select(*columns)
        .join(feedback, feedback.c.prediction_id == predictions.c[PREDICTION_ID])
        .order_by(predictions.c[CREATED_AT], predictions.c[PREDICTION_ID])
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return pd.DataFrame(rows, columns=names)


# --- Reading a window of the log (monitoring) ---------------------------------------------------------

LABEL: Final = "label"
WINDOW_COLUMNS: Final[tuple[str, ...]] = (
    PREDICTION_ID,
    CREATED_AT,
    *FEATURE_NAMES,
    PROBABILITY,
    PREDICTION,
    LABEL,
)
_READ_BATCH = 100_000
_CLOCK_MARGIN: Final = timedelta(hours=1)


def _window_query(
    dialect: str,
    model_version: str,
    after: tuple[datetime, str] | None,
    until: datetime | None,
    features: bool,
) -> tuple[Any, list[str]]:
    """The SELECT of one version's rows in a window, ordered by ``(created_at, id)``, and its columns."""
    created = predictions.c[CREATED_AT]
    # SQLite stores timestamps as ISO text: parse them in one vectorised call instead of per row.
    created_col = type_coerce(created, String) if dialect == "sqlite" else created
    columns = [name for name in WINDOW_COLUMNS if name != LABEL and (features or name not in FEATURE_NAMES)]
    query = (
        select(
            *(
                created_col.label(CREATED_AT) if name == CREATED_AT else predictions.c[name]
                for name in columns
            )
        )
        .where(predictions.c[MODEL_VERSION] == model_version)
        .order_by(created, predictions.c[PREDICTION_ID])
    )
    if after is not None:
        after_at, after_id = after
        query = query.where(
            or_(created > after_at, and_(created == after_at, predictions.c[PREDICTION_ID] > after_id))
        )
    if until is not None:
        query = query.where(created <= until)
    return query, columns


def _labels_by_position(frame: pd.DataFrame, labelled: list[Any]) -> np.ndarray:
    """The feedback labels placed on the frame's rows by prediction id (NaN where none arrived)."""
    import pandas as pd

    label = np.full(len(frame), np.nan)
    if labelled and len(frame):
        ids, values = zip(*labelled, strict=True)
        positions = pd.Index(frame[PREDICTION_ID]).get_indexer(list(ids))
        found = positions >= 0
        label[positions[found]] = np.asarray(values, dtype=np.float64)[found]
    return label


def read_window(
    engine: Engine,
    model_version: str,
    *,
    after: tuple[datetime, str] | None = None,
    until: datetime | None = None,
    features: bool = True,
) -> pd.DataFrame:
    """One model version's logged predictions in a time window, with the feedback label where known.

    Rows come ordered by ``(created_at, id)`` so ``after`` (the last row already seen) is an exact
    watermark even when several rows share a timestamp.

    Args:
        engine: The prediction log.
        model_version: Only rows served by this version.
        after: ``(created_at, id)`` of the last row already processed; rows strictly after it.
        until: Only rows created at or before this instant.
        features: Read the feature columns too (False: the rest only, for realized performance).

    Returns:
        Columns ``WINDOW_COLUMNS`` (without the features when ``features`` is False): ``created_at``
        as UTC timestamps, ``label`` as float (NaN when no feedback arrived).
    """
    import pandas as pd

    rows_query, columns = _window_query(engine.dialect.name, model_version, after, until, features)
    # Labels in a query of their own, without a join: joining a million rows to feedback costs an index
    # probe per row. A label arrives after its prediction, so labels received before the window (less
    # a margin for clocks of several API replicas) cannot belong to it; the rest are placed by id.
    labels_query = select(feedback.c.prediction_id, feedback.c.label)
    if after is not None:
        labels_query = labels_query.where(feedback.c.received_at >= after[0] - _CLOCK_MARGIN)
    parts = []
    labelled: list[Any] = []
    # A log serving has not written to yet has no tables: an empty window (creating them is serving's job).
    if {predictions.name, feedback.name} <= set(inspect(engine).get_table_names()):
        with engine.connect() as connection:
            result = connection.execute(rows_query)
            # The driver's plain tuples: SQLAlchemy's per-row processing costs more than the read itself,
            # and these columns need none (timestamps are parsed below, in one call). Without
            # `stream_results` SQLAlchemy buffers no row ahead, so the driver's cursor has them all
            # (SQLite's cursor steps through the file as it is fetched; a Postgres client cursor holds
            # the result).
            while rows := result.cursor.fetchmany(_READ_BATCH):
                parts.append(pd.DataFrame.from_records(rows, columns=columns, coerce_float=True))
            result.close()
            labelled = list(connection.execute(labels_query))
    if not parts:
        frame = pd.DataFrame({name: pd.Series(dtype="float64") for name in columns})
        frame[PREDICTION_ID] = frame[PREDICTION_ID].astype("object")
    else:
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    label = _labels_by_position(frame, labelled)
    frame[LABEL] = label
    frame[CREATED_AT] = pd.to_datetime(frame[CREATED_AT], utc=True, format="ISO8601")
    frame[PREDICTION] = frame[PREDICTION].astype("int64")
    return frame
