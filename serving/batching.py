"""Adaptive micro-batching: concurrent requests share one model call and one round of bookkeeping.

One model thread scores one batch at a time while the event loop keeps parsing requests; whatever
arrives during a model call becomes the next batch. Under light load a batch is one request (no
added wait); under heavy load batches grow by themselves, up to ``max_rows``. A model call on many
rows costs little more than on one, and the trees release the GIL, so HTTP work and model work overlap.

What follows the model call (labels, ids, the log entry, the counters) is also done once per batch,
by ``complete`` on the event loop, which returns one result per row; each caller gets its rows' slice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.holder import ServedModel
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

# (version, its rows in caller order, their probabilities) -> one result per row, in the same order.
Complete = Callable[[ServedModel, np.ndarray, np.ndarray], Sequence[Any]]


@dataclass(slots=True)
class _Pending:
    served: ServedModel
    features: np.ndarray
    future: asyncio.Future[Sequence[Any]]


class MicroBatcher:
    """Collects the rows of concurrent requests and scores them per model version in one call."""

    def __init__(self, max_rows: int, metrics: ServingMetrics, complete: Complete) -> None:
        self._max_rows = max_rows
        self._metrics = metrics
        self._complete = complete
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._busy = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def score(self, served: ServedModel, features: np.ndarray) -> Sequence[Any]:
        """``complete``'s results for the rows of ``features`` scored by ``served``, batched with others."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Sequence[Any]] = loop.create_future()
        self._pending.append(_Pending(served, features, future))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            # After the callbacks already queued on this loop turn, so their requests join the batch.
            loop.call_soon(self._flush, loop)
        return await future

    def close(self) -> None:
        """Stop the model thread (after the batch in flight)."""
        self._executor.shutdown(wait=True)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        # Callers that went away (client disconnected) are dropped before the batch's version is chosen.
        self._pending = [item for item in self._pending if not item.future.done()]
        if self._busy or not self._pending:
            return
        served = self._pending[0].served
        group: list[_Pending] = []
        rest: list[_Pending] = []
        rows = 0
        for item in self._pending:
            if item.served is served and (not group or rows + len(item.features) <= self._max_rows):
                group.append(item)
                rows += len(item.features)
            else:
                rest.append(item)
        self._pending = rest
        features = group[0].features if len(group) == 1 else np.concatenate([item.features for item in group])
        self._busy = True
        call = self._executor.submit(served.probabilities, features)
        call.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._finish, loop, done, group, features)
        )

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        call: Future[np.ndarray],
        group: list[_Pending],
        features: np.ndarray,
    ) -> None:
        self._busy = False
        try:
            results = self._complete(group[0].served, features, call.result())
        except Exception as exc:
            logger.exception("version %s failed to score %d rows", group[0].served.version, len(features))
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            self._metrics.model_batch_rows.observe(len(features))
            if len(group) == 1:
                if not group[0].future.done():
                    group[0].future.set_result(results)
            else:
                start = 0
                for item in group:
                    end = start + len(item.features)
                    if not item.future.done():
                        item.future.set_result(results[start:end])
                    start = end
        if self._pending:
            self._flush(loop)
