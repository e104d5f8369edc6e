"""Labelled production traffic from the prediction log, for training data and the gate's evaluation data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adapters.prediction_log import CREATED_AT, labelled_traffic, make_engine
from reggaeton.schema import OBSERVED_AT
from reggaeton.settings import Settings

# SQLAlchemy's URL of an empty in-memory SQLite database.
_EMPTY_LOG = "sqlite://"


def read_labelled_traffic(settings: Settings) -> pd.DataFrame:
    """Logged predictions whose true label arrived (``prediction_log.labelled_traffic``), oldest first.

    ``OBSERVED_AT`` is the prediction's time in UTC (a row's provenance in training data). Empty, with
    the same columns, when there is no log yet; a SQLite log that does not exist is not created
    (connecting would make an empty file).
    """
    url = settings.prediction_log_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        url = _EMPTY_LOG
    engine = make_engine(url)
    try:
        frame = labelled_traffic(engine)
    finally:
        engine.dispose()
    # SQLite returns naive datetimes (UTC); Postgres aware ones.
    return frame.assign(**{OBSERVED_AT: pd.to_datetime(frame[CREATED_AT], utc=True)})
