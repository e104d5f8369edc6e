"""The live gate's reads of the prediction log: both models' answers on the same requests, and the stats.

Every request answered while a challenger is under live evaluation has two answers under one prediction
id: the one that was sent (``predictions``: the champion's, or the canary's on route ``canary``) and the
other model's (``shadow_batches``, unnested). ``labelled_pairs`` joins them with the feedback labels, in the
order the labels arrived; ``recent_pairs`` gives the latest answered requests with or without a label
(agreement, score distributions, label-free estimates); ``stats`` reads the replicas' ``live_stats``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine, and_, delete, literal, select, union_all

from adapters.prediction_log import (
    CREATED_AT,
    FEEDBACK_PREDICTION_ID,
    MODEL_VERSION,
    PREDICTION_ID,
    ROUTE,
    ROUTE_CANARY,
    ROUTE_CHAMPION,
    feedback,
    live_stats,
    log_exists,
    predictions,
    shadow_answers,
)
from reggaeton.schema import PREDICTION, PROBABILITY

if TYPE_CHECKING:
    import pandas as pd

# Columns of the paired frames.
LABEL: Final = "label"
RECEIVED_AT: Final = "received_at"
CHAMPION_PROBA: Final = "champion_probability"
CHALLENGER_PROBA: Final = "challenger_probability"
CHAMPION_PREDICTION: Final = "champion_prediction"
CHALLENGER_PREDICTION: Final = "challenger_prediction"
PAIR_COLUMNS: Final = (
    PREDICTION_ID,
    CREATED_AT,
    ROUTE,
    CHAMPION_PROBA,
    CHALLENGER_PROBA,
    CHAMPION_PREDICTION,
    CHALLENGER_PREDICTION,
    LABEL,
    RECEIVED_AT,
)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _pairs(dialect: str, champion: str, challenger: str, since: datetime, labelled: bool) -> Any:
    """Both routes' requests since ``since`` with both answers (and the label: inner or outer join)."""
    # The other model's answers to requests since then: a shadow batch holds its requests' times.
    answers = shadow_answers(dialect, since)
    parts = []
    for route, sent_by, other in (
        (ROUTE_CHAMPION, champion, challenger),
        (ROUTE_CANARY, challenger, champion),
    ):
        sent, shadow = predictions.c, answers.c
        champion_side = (sent, shadow) if route == ROUTE_CHAMPION else (shadow, sent)
        query = (
            select(
                sent[PREDICTION_ID].label(PREDICTION_ID),
                sent[CREATED_AT].label(CREATED_AT),
                literal(route).label(ROUTE),
                champion_side[0][PROBABILITY].label(CHAMPION_PROBA),
                champion_side[1][PROBABILITY].label(CHALLENGER_PROBA),
                champion_side[0][PREDICTION].label(CHAMPION_PREDICTION),
                champion_side[1][PREDICTION].label(CHALLENGER_PREDICTION),
                feedback.c.label.label(LABEL),
                feedback.c.received_at.label(RECEIVED_AT),
            )
            .select_from(predictions)
            .join(
                answers,
                and_(shadow[FEEDBACK_PREDICTION_ID] == sent[PREDICTION_ID], shadow[MODEL_VERSION] == other),
            )
            .join(
                feedback,
                feedback.c[FEEDBACK_PREDICTION_ID] == sent[PREDICTION_ID],
                isouter=not labelled,
            )
            .where(sent[MODEL_VERSION] == sent_by, sent[ROUTE] == route, sent[CREATED_AT] >= _utc(since))
        )
        parts.append(query)
    return union_all(*parts).subquery()


def _frame(engine: Engine, query: Any) -> pd.DataFrame:
    import pandas as pd

    if not log_exists(engine):
        return pd.DataFrame(columns=list(PAIR_COLUMNS))
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    for column in (CREATED_AT, RECEIVED_AT):
        frame[column] = pd.to_datetime(frame[column], utc=True)  # SQLite returns naive UTC
    frame[LABEL] = pd.to_numeric(frame[LABEL]).astype("float64")  # NaN where no label arrived
    return frame


def labelled_pairs(
    engine: Engine, champion: str, challenger: str, since: datetime, received_until: datetime
) -> pd.DataFrame:
    """Requests since ``since`` with both models' answers and a label received by ``received_until``.

    In the order the labels arrived (then by id): a later label never lands before an earlier one, so
    the first rows holding n positives stay the same rows as more labels come (``reggaeton.live``).
    """
    pairs = _pairs(engine.dialect.name, champion, challenger, since, labelled=True)
    query = (
        select(pairs)
        .where(pairs.c[RECEIVED_AT] <= _utc(received_until))
        .order_by(pairs.c[RECEIVED_AT], pairs.c[PREDICTION_ID])
    )
    return _frame(engine, query)


def recent_pairs(engine: Engine, champion: str, challenger: str, since: datetime, limit: int) -> pd.DataFrame:
    """The latest ``limit`` requests since ``since`` with both answers (label NaN when none), oldest first."""
    pairs = _pairs(engine.dialect.name, champion, challenger, since, labelled=False)
    latest = select(pairs).order_by(pairs.c[CREATED_AT].desc(), pairs.c[PREDICTION_ID].desc()).limit(limit)
    frame = _frame(engine, latest)
    return frame.iloc[::-1].reset_index(drop=True)


STATS_COLUMNS: Final = (
    "replica",
    "role",
    MODEL_VERSION,
    "window_start",
    "window_end",
    "attempts",
    "rows",
    "raised",
    "timeouts",
    "invalid",
    "shed",
    "latency_sum_s",
)


def stats(engine: Engine, versions: tuple[str, ...], since: datetime) -> pd.DataFrame:
    """The replicas' ``live_stats`` rows of these versions whose interval ended after ``since``."""
    import pandas as pd

    if not log_exists(engine):
        return pd.DataFrame(columns=list(STATS_COLUMNS))
    query = (
        select(*(live_stats.c[name] for name in STATS_COLUMNS))
        .where(live_stats.c[MODEL_VERSION].in_(versions), live_stats.c.window_end > _utc(since))
        .order_by(live_stats.c.window_start)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    frame = pd.DataFrame(rows, columns=list(STATS_COLUMNS))
    for column in ("window_start", "window_end"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def prune_stats(engine: Engine, before: datetime) -> int:
    """Delete the ``live_stats`` rows whose interval ended before ``before`` (counts: not archived)."""
    if not log_exists(engine):
        return 0
    with engine.begin() as connection:
        deleted = connection.execute(delete(live_stats).where(live_stats.c.window_end < _utc(before)))
    return int(deleted.rowcount or 0)
