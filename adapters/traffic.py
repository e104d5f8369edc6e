"""Labelled production traffic from the prediction log, for training data and the gate's evaluation data.

Rows the retention flow archived are read from the archive too: a retrain keeps learning from labels
older than the live log's retention period.
"""

from __future__ import annotations

import pandas as pd

from adapters import log_archive
from adapters.prediction_log import (
    CREATED_AT,
    PREDICTION_ID,
    labelled_traffic,
    log_exists,
    make_engine,
    missing_sqlite_file,
)
from reggaeton.schema import OBSERVED_AT, TARGET
from reggaeton.settings import Settings

# SQLAlchemy's URL of an empty in-memory SQLite database.
_EMPTY_LOG = "sqlite://"


def read_labelled_traffic(settings: Settings) -> pd.DataFrame:
    """Logged predictions whose true label arrived, live (``prediction_log.labelled_traffic``) and
    archived, oldest first.

    ``OBSERVED_AT`` is the prediction's time in UTC (a row's provenance in training data). Empty, with
    the same columns, when there is no log yet; a SQLite log that does not exist is not created
    (connecting would make an empty file).
    """
    url = settings.prediction_log_url
    if missing_sqlite_file(url):
        url = _EMPTY_LOG
    engine = make_engine(url)
    try:
        live = labelled_traffic(engine)
        archived = log_archive.labelled(engine, settings.archive_path) if log_exists(engine) else None
    finally:
        engine.dispose()
    if archived is not None and not archived.empty:
        archived = archived.rename(columns={log_archive.LABEL: TARGET})[list(live.columns)]
        live = pd.concat([archived, live], ignore_index=True) if len(live) else archived
    # SQLite returns naive datetimes (UTC); Postgres aware ones.
    created = pd.to_datetime(live[CREATED_AT], utc=True)
    both = live.assign(**{CREATED_AT: created, OBSERVED_AT: created})
    return both.sort_values([CREATED_AT, PREDICTION_ID], kind="stable", ignore_index=True)
