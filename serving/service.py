"""The prediction service: score songs with the served model and hand the rows to the log."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
from sqlalchemy import Engine

from reggaeton.ids import time_ordered_ids
from reggaeton.settings import Settings
from serving.batching import MicroBatcher
from serving.cache import ModelCache
from serving.holder import ModelHolder, ServedModel
from serving.log_rows import LogEntry
from serving.log_writer import PredictionLogWriter
from serving.metrics import ServingMetrics
from serving.refresher import Refresher

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class NoModelError(RuntimeError):
    """No model has been loaded yet (registry unreachable at start and no cache)."""


@dataclass
class _VersionCounts:
    """Predictions of one version so far, and its two Prometheus counters."""

    positive_counter: Any
    negative_counter: Any
    positives: int = 0
    total: int = 0


class PredictionService:
    """Pure prediction plus injected side effects (batching, logging, metrics).

    A request reserves room for its rows in the prediction log, then waits for its batch. The batch's
    bookkeeping (labels, ids, one log entry, the counters) runs once, in :meth:`_complete`, for the
    callers still waiting, in the same event-loop callback that answers them: a row is logged if and
    only if it is answered. A request that ends otherwise gives its reservation back.
    """

    def __init__(self, holder: ModelHolder, log: PredictionLogWriter, metrics: ServingMetrics, max_rows: int):
        self.holder = holder
        self.log = log
        self.metrics = metrics
        self.batcher = MicroBatcher(max_rows, metrics, self._complete)
        self._counts: dict[str, _VersionCounts] = {}

    async def predict(self, features: np.ndarray) -> Sequence[dict[str, Any]]:
        """Predictions for an (n, 7) array, in order; queued in the log before they are returned.

        Raises:
            NoModelError: before the first model is loaded.
            LogUnavailableError: the prediction log cannot take these rows now (nothing was answered).
        """
        served = self.holder.current  # read once: the whole request uses this version
        if served is None:
            raise NoModelError("no model loaded yet")
        rows = len(features)
        self.log.reserve(rows)  # refuses at once (LogUnavailableError) when the log cannot take them
        answer = self.batcher.submit(served, features)
        try:
            return await answer
        finally:
            if not answer.done() or answer.cancelled() or answer.exception() is not None:
                self.log.release(rows)  # not answered, so not logged

    async def close(self) -> None:
        """Answer the batches in flight, then stop the model thread; call before closing the log."""
        await self.batcher.close()

    def _complete(self, served: ServedModel, features: np.ndarray, proba: np.ndarray) -> list[dict[str, Any]]:
        labels = (proba >= served.threshold).astype(np.int64)
        # One clock reading for the ids and the rows: an id's time is its row's created_at, to the
        # millisecond, which is how /feedback tells an archived id (older than the archive's cutoff).
        now_us = time.time_ns() // 1000
        created_at = _EPOCH + timedelta(microseconds=now_us)
        ids = time_ordered_ids(len(proba), now_us // 1000)
        version = served.version
        results = [
            {"id": pid, "probability": p, "label": label, "model_version": version}
            for pid, p, label in zip(ids, proba.tolist(), labels.tolist(), strict=True)
        ]
        self.log.put(LogEntry(ids, created_at, served.name, version, features, proba, labels))
        self._count(served, int(np.count_nonzero(labels)), len(labels))
        return results

    def _count(self, served: ServedModel, positives: int, total: int) -> None:
        counts = self._counts.get(served.version)
        if counts is None:  # the metric children once per version: `labels()` takes a lock per call
            counts = self._counts[served.version] = _VersionCounts(
                self.metrics.predictions.labels(model_version=served.version, label="1"),
                self.metrics.predictions.labels(model_version=served.version, label="0"),
            )
        counts.positives += positives
        counts.total += total
        if positives:
            counts.positive_counter.inc(positives)
        if total - positives:
            counts.negative_counter.inc(total - positives)
        current = self.holder.current
        if current is not None and current.version == served.version:
            self.metrics.positive_rate.set(counts.positives / counts.total)


@dataclass
class Services:
    """Everything the routes need, built in the lifespan and reached through dependencies."""

    settings: Settings
    holder: ModelHolder
    refresher: Refresher
    predictions: PredictionService
    log: PredictionLogWriter
    engine: Engine
    metrics: ServingMetrics
    cache: ModelCache
