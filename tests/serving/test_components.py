"""The server's parts without HTTP: micro-batching, the log writer's backpressure, the model cache."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from serving_support import decided
from sklearn.linear_model import LogisticRegression
from sqlalchemy import Engine, create_engine, func, select
from starlette.datastructures import State

from adapters.prediction_log import (
    ROUTE,
    ROUTE_CANARY,
    ROUTE_CHAMPION,
    create_tables,
    make_engine,
    predictions,
)
from reggaeton import decision_record
from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES
from reggaeton.servable import examples_array
from reggaeton.settings import Settings
from serving.batching import MicroBatcher
from serving.cache import ModelCache
from serving.fast_path import PredictFastPath
from serving.holder import ModelCheckError, ModelHolder, ServedModel, prepared
from serving.log_rows import LogEntry, encode
from serving.log_writer import LogUnavailableError, PredictionLogWriter
from serving.metrics import ServingMetrics
from serving.middleware import MetricsMiddleware
from serving.service import PredictionService
from serving.spool import Journal, SpoolLockedError


def _segments(folder: Path) -> list[Path]:
    """The journal's segment files (the folder also holds the lock file of the server using it)."""
    return sorted(folder.glob("segment-*.jsonl"))


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
        return await asyncio.gather(*(batcher.submit(served, r) for r in rows))

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
        calls = [batcher.submit(served[i % 2], row) for i in range(10)]
        await asyncio.gather(*calls)

    asyncio.run(run())
    assert sorted(old.calls + new.calls) == [1, 1, 4, 4]


def test_a_caller_gone_first_in_line_does_not_strand_the_others() -> None:
    old, new = _CountingModel(), _CountingModel()
    row = np.full((1, 7), 0.5)

    async def run() -> Sequence[float]:
        batcher = MicroBatcher(4, ServingMetrics(), _probabilities)
        gone = batcher.submit(_served(old, "1"), row)
        waiting = batcher.submit(_served(new, "2"), row)
        # Both queued, and the flush has not run (it runs on the next loop turn).
        gone.cancel()  # the first in line goes away (a client disconnect during a version swap)
        return await asyncio.wait_for(waiting, timeout=10)

    assert len(asyncio.run(run())) == 1
    assert old.calls == [] and new.calls == [1]


class _GatedModel(_CountingModel):
    """Scores only once the test opens the gate, so a batch can be held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def predict_proba(self, features: np.ndarray) -> Any:
        self.entered.set()
        assert self.gate.wait(timeout=30)
        return super().predict_proba(features)


def _log(tmp_path: Path, capacity: int) -> tuple[Engine, PredictionLogWriter, ServingMetrics]:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    metrics = ServingMetrics()
    return (
        engine,
        PredictionLogWriter(engine, metrics, capacity_rows=capacity, batch_rows=2, flush_interval_s=0.01),
        metrics,
    )


def _logged_ids(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(predictions.c.id)).scalars())


def test_a_caller_gone_during_the_model_call_is_neither_logged_nor_kept_in_the_queue(tmp_path: Path) -> None:
    engine, log, metrics = _log(tmp_path, capacity=100)
    model = _GatedModel()
    holder = ModelHolder()
    holder.swap(_served(model))
    service = PredictionService(holder, log, metrics, max_rows=64)

    async def run() -> tuple[Sequence[dict[str, Any]], float | None]:
        log.start()
        row = np.full((1, 7), 0.5)
        staying = asyncio.create_task(service.predict(row))
        leaving = asyncio.create_task(service.predict(np.full((2, 7), 0.4)))
        await asyncio.to_thread(model.entered.wait, 30)  # both rows are in the model call now
        leaving.cancel()
        await asyncio.sleep(0.05)
        model.gate.set()
        answered = await asyncio.wait_for(staying, timeout=30)
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        queued = metrics.registry.get_sample_value("reggaeton_prediction_log_queue_rows")
        await service.close()
        await log.close()
        return answered, queued

    answered, queued = asyncio.run(run())
    assert model.calls == [3]  # one batch of both callers
    assert _logged_ids(engine) == [answered[0]["id"]]  # only what was answered
    assert queued is not None and queued <= 1  # the leaving caller's 2 reserved rows were given back
    engine.dispose()


def _entry(i: int) -> LogEntry:
    features = np.full((2, 7), 0.5)
    return LogEntry(
        [f"{i}-a", f"{i}-b"], datetime.now(UTC), "m", "1", features, np.array([0.1, 0.9]), np.array([0, 1])
    )


def test_without_a_journal_a_full_queue_refuses_at_once_and_keeps_what_it_took(tmp_path: Path) -> None:
    engine, log, metrics = _log(tmp_path, capacity=3)
    refused = 0
    peak = 0.0

    async def one(i: int) -> None:
        nonlocal peak, refused
        try:
            log.reserve(2)
        except LogUnavailableError:
            refused += 1
            return
        peak = max(peak, metrics.registry.get_sample_value("reggaeton_prediction_log_queue_rows") or 0.0)
        await asyncio.sleep(0.005)  # scoring takes a while: rows reserved, not yet put
        log.put(_entry(i))

    async def run() -> None:
        log.start()
        await asyncio.gather(*(one(i) for i in range(100)))
        await log.close()

    asyncio.run(run())
    assert peak <= 3
    assert refused > 0
    assert len(_logged_ids(engine)) == 2 * (100 - refused)
    assert metrics.log_queue_full._value.get() == refused
    assert metrics.log_refused._value.get() == refused
    engine.dispose()


def test_closing_answers_the_rows_queued_and_refuses_new_ones() -> None:
    model = _CountingModel()
    row = np.full((1, 7), 0.5)

    async def run() -> tuple[int, bool]:
        batcher = MicroBatcher(4, ServingMetrics(), _probabilities)
        queued = [batcher.submit(_served(model), row) for _ in range(6)]
        await batcher.close()
        answered = sum(1 for future in queued if future.done() and not future.exception())
        try:
            batcher.submit(_served(model), row)
        except RuntimeError:
            return answered, True
        return answered, False

    assert asyncio.run(run()) == (6, True)


class _FailingModel:
    def predict_proba(self, features: np.ndarray) -> Any:
        raise ValueError("this model cannot score")


def test_a_model_that_fails_to_score_answers_500_counted_and_unlogged(tmp_path: Path) -> None:
    engine, log, metrics = _log(tmp_path, capacity=100)
    holder = ModelHolder()
    holder.swap(_served(_FailingModel()))
    service = PredictionService(holder, log, metrics, max_rows=64)
    state = State()
    state.services = SimpleNamespace(settings=Settings(state_dir=tmp_path / "state"), predictions=service)
    body = json.dumps(EXAMPLE_SONGS[0]).encode()
    sent: list[dict[str, Any]] = []

    async def framework(*_: Any) -> None:
        raise AssertionError("a valid request must not reach the framework")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    async def run() -> None:
        log.start()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
        app = MetricsMiddleware(PredictFastPath(framework, state), metrics, routes=["/predict"])
        await app(scope, receive, send)
        await service.close()
        await log.close()

    asyncio.run(run())
    assert sent[0]["status"] == 500
    assert sent[1]["body"] == b"Internal Server Error"
    assert (
        metrics.registry.get_sample_value(
            "reggaeton_http_requests_total", {"route": "/predict", "status": "500"}
        )
        == 1
    )
    assert metrics.registry.get_sample_value("reggaeton_prediction_log_queue_rows") == 0
    assert _logged_ids(engine) == []
    engine.dispose()


def test_a_full_queue_spills_to_the_journal_and_loses_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    metrics = ServingMetrics()
    entries = 200
    journal = Journal(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=2048)

    async def run() -> None:
        writer = PredictionLogWriter(
            engine, metrics, capacity_rows=3, batch_rows=2, flush_interval_s=0.05, journal=journal
        )
        writer.start()
        for i in range(entries):
            writer.reserve(2)  # the queue in memory is full most of the time: never refused, never waits
            writer.put(_entry(i))
            if i % 10 == 0:
                await asyncio.sleep(0)
        await writer.flush()
        await writer.close()

    asyncio.run(run())
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(predictions)).scalar_one() == 2 * entries
    assert metrics.log_queue_full._value.get() > 0
    assert metrics.log_rows_replayed._value.get() > 0  # read back from the journal
    assert metrics.log_rows_written._value.get() == 2 * entries
    assert metrics.log_rows_spooled._value.get() == 2 * entries
    assert _segments(tmp_path / "spool") == []  # all committed: the journal is gone
    engine.dispose()


def test_a_journal_left_behind_is_replayed_exactly_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    spool = tmp_path / "spool"
    first = Journal(spool, max_bytes=1 << 20, segment_bytes=1024)
    first.open()
    for i in range(30):
        first.append(_entry(i))
    first.close(None)  # as if killed: every segment left on disk
    # A torn last record (killed in the middle of a write; it was never answered).
    last = _segments(spool)[-1]
    with last.open("ab") as file:
        file.write(b'{"t": "2026-11-30T')
    # Half of them made it to the database before the crash.
    with engine.begin() as connection:
        connection.execute(
            predictions.insert(),
            [
                {
                    "id": f"{i}-a",
                    "created_at": datetime.now(UTC),
                    "model_name": "m",
                    "model_version": "1",
                    **dict.fromkeys(FEATURE_NAMES, 0.5),
                    "probability": 0.1,
                    "prediction": 0,
                }
                for i in range(15)
            ],
        )
    metrics = ServingMetrics()

    async def run() -> None:
        writer = PredictionLogWriter(
            engine,
            metrics,
            capacity_rows=100,
            batch_rows=7,
            flush_interval_s=0.01,
            journal=Journal(spool, max_bytes=1 << 20, segment_bytes=1024),
        )
        writer.start()
        writer.reserve(2)
        writer.put(_entry(1000))
        await writer.flush()
        await writer.close()

    asyncio.run(run())
    ids = _logged_ids(engine)
    assert len(ids) == len(set(ids)) == 2 * 31
    # The 60 rows left behind, and the 2 put while they were replayed (queued behind them in the journal).
    assert metrics.log_rows_replayed._value.get() == 62
    assert _segments(spool) == []
    engine.dispose()


def test_a_journal_line_of_the_previous_version_replays_as_the_champions(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    spool = tmp_path / "spool"
    spool.mkdir()
    # A line exactly as the server before routes wrote it (no "r"), then a canary's line of today.
    old = {
        "t": "2026-12-01T10:00:00+00:00",
        "n": "m",
        "v": "1",
        "ids": ["old-a", "old-b"],
        "x": [[0.5] * 7, [0.25] * 7],
        "p": [0.1, 0.9],
        "y": [0, 1],
    }
    canary = _entry(7)
    canary.route = ROUTE_CANARY
    segment = spool / "segment-000000000001.jsonl"
    segment.write_bytes(json.dumps(old).encode() + b"\n" + encode(canary))

    async def run() -> None:
        writer = PredictionLogWriter(
            engine,
            ServingMetrics(),
            capacity_rows=100,
            batch_rows=10,
            flush_interval_s=0.01,
            journal=Journal(spool, max_bytes=1 << 20, segment_bytes=1 << 16),
        )
        writer.start()
        await writer.flush()
        await writer.close()

    asyncio.run(run())
    with engine.connect() as connection:
        routes = dict(connection.execute(select(predictions.c.id, predictions.c[ROUTE])).all())
    assert routes == {
        "old-a": ROUTE_CHAMPION,
        "old-b": ROUTE_CHAMPION,
        "7-a": ROUTE_CANARY,
        "7-b": ROUTE_CANARY,
    }
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


def test_prepared_refuses_nan_and_bad_threshold() -> None:
    model = _CountingModel()
    prepared(_served(model))
    with pytest.raises(ModelCheckError, match="threshold"):
        prepared(_served(model, threshold=1.5))

    class NaNModel:
        def predict_proba(self, features: np.ndarray) -> np.ndarray:
            return np.full((len(features), 2), np.nan)

    with pytest.raises(ModelCheckError, match="finite"):
        prepared(_served(NaNModel()))


def test_cache_round_trip_and_other_model_ignored(tmp_path: Path) -> None:
    key = decision_record.generate()
    trusted = decision_record.VerifyKeys.of([key.public])
    cache = ModelCache(tmp_path / "cache")
    assert cache.load("m", trusted) is None
    model = _CountingModel()
    cache.save(dataclasses.replace(_served(model, version="7"), **decided("m", "7", key)))
    loaded = cache.load("m", trusted)
    assert loaded is not None and loaded.version == "7" and loaded.source == "cache"
    np.testing.assert_allclose(
        loaded.probabilities(examples_array()), _served(model).probabilities(examples_array())
    )
    assert cache.load("another-model", trusted) is None


def test_one_spool_folder_serves_one_server_at_a_time(tmp_path: Path) -> None:
    first = Journal(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=1024)
    first.open()
    with pytest.raises(SpoolLockedError, match="another running server"):
        Journal(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=1024).open()
    first.close(first.end)
    second = Journal(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=1024)
    assert second.open() is None  # free again, and nothing left to replay
    second.close(second.end)


def test_replicas_sharing_a_spool_folder_each_claim_their_own_slot(tmp_path: Path) -> None:
    def journal() -> Journal:
        return Journal(tmp_path / "spool", max_bytes=1 << 20, segment_bytes=1024, slots=2)

    first, second = journal(), journal()
    first.open()
    second.open()
    assert {first.directory.name, second.directory.name} == {"replica-0", "replica-1"}
    with pytest.raises(SpoolLockedError, match="every slot is held"):
        journal().open()
    # A replica that starts again finds a free slot, and what its earlier holder left there.
    first.append(_entry(0))
    released = first.directory
    first.close(None)  # as if killed: the lock goes with the process, the segment stays
    third = journal()
    assert third.open() is not None
    assert third.directory == released
    third.close(third.end)
    second.close(second.end)
