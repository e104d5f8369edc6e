"""The retention flow for real: a real Prefect server, a SQLite log with old and new rows, the archive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from adapters import prediction_log
from flows.retention import retention
from monitoring import simulate
from reggaeton.data import synthetic_dataset
from reggaeton.settings import Settings


@pytest.mark.slow
def test_retention_flow_archives_what_is_older_than_the_setting(tmp_path: Path, prefect_api_url: str) -> None:
    settings = Settings(
        state_dir=tmp_path / "state", prefect={"api_url": prefect_api_url}, retention={"keep_days": 2.0}
    )
    assert retention(settings).archived == 0  # no log yet: nothing to do, no failure, no log made
    assert not Path(settings.prediction_log_url.removeprefix("sqlite:///")).exists()

    settings.ensure_state_dir()
    engine = prediction_log.make_engine(settings.prediction_log_url)
    prediction_log.create_tables(engine)
    songs = synthetic_dataset(480, seed=1).frame.assign(probability=0.3, prediction=0)
    # One song every 15 minutes over the last five days, none within 7 minutes of the cutoff (two days
    # ago, as the runs below see it): three days' worth, 288 songs, is older.
    start, interval = datetime.now(UTC) - timedelta(days=5) + timedelta(minutes=7), timedelta(minutes=15)
    simulate.log_traffic(
        engine,
        songs,
        "1",
        start=start,
        interval=interval,
        feedback_fraction=0.5,
        seed=1,
    )

    stats = {"replica": "a", "role": "shadow", "model_version": "2", "model_name": "m", "attempts": 1}
    counts = {"rows": 1, "raised": 0, "timeouts": 0, "invalid": 0, "shed": 0, "latency_sum_s": 0.1}
    with engine.begin() as connection:
        for days in (4, 1):  # one interval older than the cutoff, one newer
            end = datetime.now(UTC) - timedelta(days=days)
            connection.execute(
                insert(prediction_log.live_stats),
                {**stats, **counts, "window_start": end - timedelta(seconds=10), "window_end": end},
            )

    summary = retention(settings)

    assert summary.stats_deleted == 1
    with engine.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(prediction_log.live_stats)).scalar_one() == 1
        )
    (moved, shadow) = summary.moved
    assert moved.source == "predictions" and shadow.archived == 0
    assert moved.archived == 288 and moved.archived + moved.kept == moved.before == 480
    with engine.connect() as connection:
        oldest = connection.execute(select(func.min(prediction_log.predictions.c.created_at))).scalar_one()
    assert oldest.replace(tzinfo=UTC) >= summary.cutoff
    files = list((settings.archive_path / "predictions").glob("date=*/part-*.parquet"))
    # One file per UTC day the archived rows fall on: four (the first partly, two whole, the last partly),
    # or three when the first song falls after midnight (a run in the last minutes of a UTC day).
    days = {(start + i * interval).date() for i in range(len(songs)) if start + i * interval < summary.cutoff}
    assert len(files) == len(days) and len(days) in (3, 4)
    assert retention(settings).archived == 0  # the second run finds nothing older
    engine.dispose()
