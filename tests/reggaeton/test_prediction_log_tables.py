"""Reading labelled traffic (predictions joined with late feedback) back from the prediction log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from reggaeton.prediction_log import (
    CREATED_AT,
    PREDICTION_ID,
    create_tables,
    feedback,
    labelled_traffic,
    make_engine,
    predictions,
)
from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES, PREDICTION, PROBABILITY, TARGET


def test_only_predictions_with_feedback_come_back_oldest_first(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    assert labelled_traffic(engine).empty  # no tables yet: nothing, not an error
    create_tables(engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            PREDICTION_ID: f"p{i}",
            CREATED_AT: start + timedelta(minutes=10 - i),
            "model_name": "reggaeton-classifier",
            "model_version": "3",
            **EXAMPLE_SONGS[i % 2],
            PROBABILITY: 0.1 * i,
            PREDICTION: int(i % 2 == 0),
        }
        for i in range(4)
    ]
    labels = [
        {"prediction_id": "p1", "label": 1, "received_at": start},
        {"prediction_id": "p3", "label": 0, "received_at": start},
    ]
    with engine.begin() as connection:
        connection.execute(predictions.insert(), rows)
        connection.execute(feedback.insert(), labels)

    traffic = labelled_traffic(engine)
    assert list(traffic[PREDICTION_ID]) == ["p3", "p1"]  # p3 was created first
    assert list(traffic[TARGET]) == [0, 1]
    assert set(FEATURE_NAMES) <= set(traffic.columns)
    assert (
        traffic.loc[traffic[PREDICTION_ID] == "p1", "danceability"].item() == EXAMPLE_SONGS[1]["danceability"]
    )
    engine.dispose()
