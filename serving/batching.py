"""Adaptive micro-batching: concurrent requests share one ``predict_proba`` call on a numpy array.

A model call on many rows costs little more than on one, so requests that arrive while the loop is
busy are scored together on the next loop turn. Under light load a batch is one request (no added
wait); under heavy load batches grow by themselves, up to ``max_rows``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from serving.holder import ServedModel
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    served: ServedModel
    features: np.ndarray
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Collects the rows of concurrent requests and scores them per model version in one call."""

    def __init__(self, max_rows: int, metrics: ServingMetrics) -> None:
        self._max_rows = max_rows
        self._metrics = metrics
        self._pending: list[_Pending] = []
        self._scheduled = False

    async def probabilities(self, served: ServedModel, features: np.ndarray) -> np.ndarray:
        """Positive-class probabilities of ``features`` from ``served``, batched with concurrent callers."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append(_Pending(served, features, future))
        if not self._scheduled:
            self._scheduled = True
            # Run after the callbacks already queued on this loop turn, so their requests join the batch.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        while pending:
            served = pending[0].served
            group: list[_Pending] = []
            rest: list[_Pending] = []
            rows = 0
            for item in pending:
                if item.served is served and (not group or rows + len(item.features) <= self._max_rows):
                    group.append(item)
                    rows += len(item.features)
                else:
                    rest.append(item)
            pending = rest
            self._score(served, group, rows)

    def _score(self, served: ServedModel, group: list[_Pending], rows: int) -> None:
        features = group[0].features if len(group) == 1 else np.concatenate([item.features for item in group])
        try:
            proba = served.probabilities(features)
        except Exception as exc:
            logger.exception("version %s failed to score %d rows", served.version, rows)
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._metrics.model_batch_rows.observe(rows)
        start = 0
        for item in group:
            end = start + len(item.features)
            if not item.future.done():  # a client that went away cancelled its future
                item.future.set_result(proba[start:end])
            start = end
