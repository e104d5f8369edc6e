"""A window streamed in batches through NannyML gives the results of the whole window in one frame."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from monitoring_support import Champion, TrafficWriter

from adapters import log_window, prediction_log
from monitoring import estimation
from monitoring.estimation import ChunkPlan, ChunkResult


def _same(left: Any, right: Any) -> bool:
    """Equal, NaN equal to NaN (a chunk's missing reconstruction threshold, say)."""
    if isinstance(left, float) and isinstance(right, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, tuple | list) and isinstance(right, tuple | list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def _differences(streamed: list[ChunkResult], whole: list[ChunkResult]) -> list[str]:
    found = [] if len(streamed) == len(whole) else [f"{len(streamed)} chunks streamed, {len(whole)} whole"]
    for a, b in zip(streamed, whole, strict=False):
        left, right = asdict(a), asdict(b)
        found += [
            f"chunk {b.index} {f.name}: {left[f.name]!r} != {right[f.name]!r}"
            for f in fields(ChunkResult)
            if not _same(left[f.name], right[f.name])
        ]
    return found


def _stream(engine: Any, champion: Champion, plan: ChunkPlan, **options: Any) -> estimation.Stream:
    with log_window.open_window(engine, champion.version) as window:
        return estimation.estimate_stream(champion.reference, window.frames(batch_rows=350), plan, **options)


def test_a_window_streamed_in_slices_equals_the_whole_frame_exactly(
    traffic: TrafficWriter, champion: Champion, tmp_path: Path
) -> None:
    # 2,800 rows: five chunks of 500 and a tail; read 350 rows at a time, NannyML on 1,200 (two whole
    # chunks): slices and batches cut across each other. A drifted half, so drift shows in some chunks.
    traffic.write("stable", 1300, feedback_fraction=0.4)
    traffic.write("drift", 1500, feedback_fraction=0.4)
    plan = ChunkPlan(reference_chunk_size=400, chunk_size=500)
    whole_frame = log_window.read_window(traffic.engine, champion.version)
    whole = estimation.estimate(champion.reference, whole_frame, plan)

    streamed = _stream(traffic.engine, champion, plan, slice_rows=1200, cache_dir=tmp_path / "cache")

    assert len(whole) == 5
    assert _differences(streamed.chunks, whole) == []  # bit for bit: the same rows reach each chunk
    assert any(chunk.drifted_features for chunk in whole) and any(chunk.realized for chunk in whole)
    assert (streamed.rows_read, streamed.rows_analysed) == (2800, 2500)
    last = whole_frame.iloc[2499]
    assert streamed.watermark == (pd.Timestamp(last["created_at"]).to_pydatetime(), last["id"])
    # The second run reads the fitted calculators from the cache: same results again.
    assert list((tmp_path / "cache").glob("monitors-*.pkl"))
    again = _stream(traffic.engine, champion, plan, slice_rows=5000, cache_dir=tmp_path / "cache")
    assert _differences(again.chunks, whole) == []


def test_chunks_by_period_streamed_equal_the_whole_frame(traffic: TrafficWriter, champion: Champion) -> None:
    # One song a second from a whole minute: five full minutes and a thin last one, which is analysed
    # too (period chunking analyses every period, as in one frame).
    traffic.next_at = datetime(2026, 1, 1, tzinfo=UTC)
    traffic.write("stable", 320, feedback_fraction=0.5)
    plan = ChunkPlan(reference_chunk_size=400, chunk_size=None, chunk_period="min")
    whole = estimation.estimate(
        champion.reference, log_window.read_window(traffic.engine, champion.version), plan
    )
    streamed = _stream(traffic.engine, champion, plan, slice_rows=130)
    assert [chunk.rows for chunk in whole] == [60, 60, 60, 60, 60, 20]
    assert _differences(streamed.chunks, whole) == []
    assert streamed.rows_analysed == 320


@pytest.mark.slow
def test_a_postgres_window_streamed_through_a_server_cursor_equals_sqlites(
    traffic: TrafficWriter, champion: Champion, postgres_url: str
) -> None:
    traffic.write("stable", 1000, feedback_fraction=0.4)
    traffic.write("drift", 1500, feedback_fraction=0.4)
    rows = log_window.read_window(traffic.engine, champion.version)
    labels = rows.dropna(subset=["label"])
    postgres = prediction_log.make_engine(postgres_url)
    prediction_log.create_tables(postgres)
    columns = [name for name in rows.columns if name != "label"]
    with postgres.begin() as connection:
        connection.execute(
            prediction_log.predictions.insert(),
            [
                {**record, "model_name": "m", "model_version": champion.version}
                for record in rows[columns].to_dict(orient="records")
            ],
        )
        connection.execute(
            prediction_log.feedback.insert(),
            [
                {"prediction_id": pid, "label": int(label), "received_at": datetime.now(UTC)}
                for pid, label in zip(labels["id"], labels["label"], strict=True)
            ],
        )
    plan = ChunkPlan(reference_chunk_size=400, chunk_size=500)
    whole = estimation.estimate(champion.reference, rows, plan)
    streamed = _stream(postgres, champion, plan, slice_rows=1000)
    narrow = log_window.read_window(
        postgres, champion.version, after=(rows["created_at"].iloc[9], rows["id"].iloc[9])
    )
    postgres.dispose()
    assert _differences(streamed.chunks, whole) == []
    assert len(narrow) == 2490 and narrow["id"].iloc[0] == rows["id"].iloc[10]
    assert pd.Series(narrow["created_at"].dt.tz is not None).all()
    assert (
        timedelta(0) <= narrow["created_at"].iloc[0] - rows["created_at"].iloc[10] < timedelta(microseconds=1)
    )
