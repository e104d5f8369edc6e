"""The server's parts without HTTP: micro-batching, the log writer's backpressure, the model cache."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sqlalchemy import create_engine, func, select

from reggaeton.prediction_log import create_tables, make_engine, predictions
from reggaeton.schema import FEATURE_NAMES
from serving.batching import MicroBatcher
from serving.cache import ModelCache
from serving.holder import ModelCheckError, ServedModel, examples_array, smoke_check
from serving.log_writer import LogEntry, PredictionLogWriter
from serving.metrics import ServingMetrics


class _CountingModel:
    """A fitted logistic regression that records the size of every predict_proba call."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        features = rng.random((60, 7))
        self._model = LogisticRegression().fit(features, (features[:, 0] > 0.5).astype(int))
        self.calls: list[int] = []

    def predict_proba(self, features: np.ndarray) -> Any:
        self.calls.append(len(features))
        return self._model.predict_proba(features)


def _served(model: Any, version: str = "1", threshold: float = 0.5) -> ServedModel:
    return ServedModel("m", version, None, model, threshold, datetime.now(UTC), "registry")


def _probabilities(_: ServedModel, __: np.ndarray, proba: np.ndarray) -> list[float]:
    """The batch's ``complete`` step reduced to handing back the probabilities."""
    return list(proba.tolist())


def test_concurrent_requests_share_one_model_call() -> None:
    model = _CountingModel()
    served = _served(model)
    rows = [np.random.default_rng(i).random((1 + i % 3, 7)) for i in range(20)]

    async def run() -> list[Sequence[float]]:
        batcher = MicroBatcher(1000, ServingMetrics(), _probabilities)
        return await asyncio.gather(*(batcher.score(served, r) for r in rows))

    results = asyncio.run(run())
    assert model.calls == [sum(len(r) for r in rows)]
    for features, proba in zip(rows, results, strict=True):
        np.testing.assert_allclose(proba, model._model.predict_proba(features)[:, 1])


def test_batches_respect_max_rows_and_model_versions() -> None:
    old, new = _CountingModel(), _CountingModel()
    served = [_served(new, "2"), _served(old, "1")]  # a swap between requests: two versions in flight
    row = np.full((1, 7), 0.5)

    async def run() -> None:
        batcher = MicroBatcher(4, ServingMetrics(), _probabilities)
        calls = [batcher.score(served[i % 2], row) for i in range(10)]
        await asyncio.gather(*calls)

    asyncio.run(run())
    assert sorted(old.calls + new.calls) == [1, 1, 4, 4]


def test_a_caller_gone_first_in_line_does_not_strand_the_others() -> None:
    old, new = _CountingModel(), _CountingModel()
    row = np.full((1, 7), 0.5)

    async def run() -> Sequence[float]:
        batcher = MicroBatcher(4, ServingMetrics(), _probabilities)
        gone = asyncio.create_task(batcher.score(_served(old, "1"), row))
        waiting = asyncio.create_task(batcher.score(_served(new, "2"), row))
        await asyncio.sleep(0)  # both queued, the flush not run yet
        gone.cancel()  # the first in line goes away (a client disconnect during a version swap)
        return await asyncio.wait_for(waiting, timeout=10)

    assert len(asyncio.run(run())) == 1
    assert old.calls == [] and new.calls == [1]


def test_full_log_queue_waits_and_loses_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    metrics = ServingMetrics()
    entries = 200

    async def run() -> None:
        writer = PredictionLogWriter(engine, metrics, capacity_rows=3, batch_rows=2, flush_interval_s=0.05)
        writer.start()
        now = datetime.now(UTC)

        async def submit(i: int) -> None:
            ids = [f"{i}-a", f"{i}-b"]
            features = np.full((2, 7), 0.5)
            await writer.room()
            writer.put(LogEntry(ids, now, "m", "1", features, np.array([0.1, 0.9]), np.array([0, 1])))

        await asyncio.gather(*(submit(i) for i in range(entries)))
        await writer.close()

    asyncio.run(run())
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(predictions)).scalar_one() == 2 * entries
    assert metrics.log_queue_full._value.get() > 0
    assert metrics.log_rows_written._value.get() == 2 * entries
    engine.dispose()


@pytest.mark.parametrize("paramstyle", ["qmark", "named"])
def test_log_rows_round_trip_with_positional_and_named_parameters(tmp_path: Path, paramstyle: str) -> None:
    # The writer runs a pre-compiled INSERT on the driver: check both parameter styles a dialect may use.
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}", paramstyle=paramstyle)
    create_tables(engine)
    created = datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=UTC)
    features = np.random.default_rng(1).random((3, 7))
    entry = LogEntry(
        ["a", "b", "c"], created, "m", "7", features, np.array([0.1, 0.5, 0.9]), np.array([0, 1, 1])
    )

    async def run() -> None:
        writer = PredictionLogWriter(
            engine, ServingMetrics(), capacity_rows=10, batch_rows=10, flush_interval_s=0.01
        )
        writer.start()
        writer.put(entry)
        await writer.close()

    asyncio.run(run())
    with engine.connect() as connection:
        rows = connection.execute(select(predictions).order_by(predictions.c.id)).mappings().all()
    engine.dispose()
    assert [row["id"] for row in rows] == ["a", "b", "c"]
    assert {(row["model_name"], row["model_version"]) for row in rows} == {("m", "7")}
    assert [row["created_at"].replace(tzinfo=UTC) for row in rows] == [created] * 3
    np.testing.assert_array_equal([[row[name] for name in FEATURE_NAMES] for row in rows], features)
    assert [row["probability"] for row in rows] == [0.1, 0.5, 0.9]
    assert [row["prediction"] for row in rows] == [0, 1, 1]


def test_smoke_check_refuses_nan_and_bad_threshold() -> None:
    model = _CountingModel()
    smoke_check(_served(model))
    with pytest.raises(ModelCheckError, match="threshold"):
        smoke_check(_served(model, threshold=1.5))

    class NaNModel:
        def predict_proba(self, features: np.ndarray) -> np.ndarray:
            return np.full((len(features), 2), np.nan)

    with pytest.raises(ModelCheckError, match="finite"):
        smoke_check(_served(NaNModel()))


def test_cache_round_trip_and_other_model_ignored(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    assert cache.load("m") is None
    model = _CountingModel()
    cache.save(_served(model, version="7"))
    loaded = cache.load("m")
    assert loaded is not None and loaded.version == "7" and loaded.source == "cache"
    np.testing.assert_allclose(
        loaded.probabilities(examples_array()), _served(model).probabilities(examples_array())
    )
    assert cache.load("another-model") is None
