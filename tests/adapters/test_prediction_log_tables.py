"""Reading labelled traffic (predictions joined with late feedback) back from the prediction log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.log_window import LABEL, WINDOW_COLUMNS, read_window
from adapters.prediction_log import (
    CREATED_AT,
    PREDICTION_ID,
    ROUTE,
    ROUTE_CANARY,
    ROUTE_CHAMPION,
    create_tables,
    feedback,
    labelled_traffic,
    make_engine,
    predictions,
)
from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES, PREDICTION, PROBABILITY, TARGET
from reggaeton.settings import POSTGRES_SESSION_SETTINGS


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


def test_window_carries_each_rows_label_and_nothing_from_other_versions_or_routes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            PREDICTION_ID: f"p{i}",
            CREATED_AT: start + timedelta(minutes=i),
            "model_name": "reggaeton-classifier",
            "model_version": "2" if i == 4 else "1",
            **EXAMPLE_SONGS[i % 2],
            PROBABILITY: 0.1 * i,
            PREDICTION: int(i % 2 == 0),
            ROUTE: ROUTE_CANARY if i == 6 else ROUTE_CHAMPION,
        }
        for i in range(7)
    ]
    labels = [  # p0 labelled but before the watermark; p4 is another version's; p6 a canary's answer
        {"prediction_id": pid, "label": label, "received_at": start + timedelta(hours=2)}
        for pid, label in (("p0", 1), ("p2", 1), ("p3", 0), ("p4", 1), ("p6", 1))
    ]
    with engine.begin() as connection:
        connection.execute(predictions.insert(), rows)
        connection.execute(feedback.insert(), labels)

    window = read_window(engine, "1", after=(start, "p0"), until=start + timedelta(minutes=6))
    assert list(window[PREDICTION_ID]) == ["p1", "p2", "p3", "p5"]
    assert window[LABEL].tolist()[1:3] == [1.0, 0.0]
    assert window[LABEL].isna().tolist() == [True, False, False, True]
    assert str(window[CREATED_AT].dt.tz) == "UTC" and window[PREDICTION].dtype == "int64"
    assert read_window(engine, "9").empty  # an unknown version: an empty frame with the columns
    assert list(read_window(engine, "9").columns) == list(WINDOW_COLUMNS)
    engine.dispose()


def test_postgres_log_sessions_carry_the_servers_bounds_for_a_dead_client(postgres_url: str) -> None:
    # A replica cut off mid-transaction by a network split must not leave a backend that holds its rows'
    # locks for the server's default two hours: the retry of those rows would wait on them as long (the
    # compose stack's Postgres outage test saw it). The session carries the bounds, whatever the server's
    # own configuration; what the URL sets itself still wins. (That the server then ends such a backend is
    # shown with a real network split in tests/infra/test_compose_stack.py.)
    names = ", ".join(f"current_setting('{name}')" for name in POSTGRES_SESSION_SETTINGS)
    with make_engine(postgres_url).connect() as connection:
        shown = connection.exec_driver_sql(f"SELECT {names}").one()
    assert dict(zip(POSTGRES_SESSION_SETTINGS, shown, strict=True)) == {
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "3",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "10000",  # milliseconds
    }
    with make_engine(f"{postgres_url}?options=-c%20tcp_keepalives_idle%3D20").connect() as connection:
        assert connection.exec_driver_sql("SHOW tcp_keepalives_idle").scalar() == "20"
        assert connection.exec_driver_sql("SHOW tcp_keepalives_count").scalar() == "3"
