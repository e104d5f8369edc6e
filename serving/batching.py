"""Adaptive micro-batching: concurrent requests share one model call and one round of bookkeeping.

One model thread scores one batch at a time while the event loop keeps parsing requests; whatever
arrives during a model call becomes the next batch. Under light load a batch is one request (no
added wait); under heavy load batches grow by themselves, up to ``max_rows``. A model call on many
rows costs little more than on one, and the trees release the GIL, so HTTP work and model work overlap.

What follows the model call (labels, ids, the log entry, the counters) is also done once per batch,
by ``complete`` on the event loop, which returns one result per row; each caller gets its rows' slice.
``complete`` sees only the callers still waiting, and they are answered in the same callback, so what
it records (the prediction log) is exactly what is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serving.holder import ServedModel
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

# (version, its rows in caller order, their probabilities) -> one result per row, in the same order.
Complete = Callable[[ServedModel, np.ndarray, np.ndarray], Sequence[Any]]


class Executor(Protocol):
    """What runs the model calls: a one-thread pool (the champion's) or a daemon model thread (a canary's)."""

    def submit(self, fn: Callable[[np.ndarray], np.ndarray], features: np.ndarray, /) -> Future[np.ndarray]:
        """Call ``fn(features)`` in the thread."""
        ...

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking calls (and wait for the thread when ``wait``)."""
        ...


@dataclass(slots=True, eq=False)
class _Pending:
    served: ServedModel
    features: np.ndarray
    future: asyncio.Future[Sequence[Any]]


class MicroBatcher:
    """Collects the rows of concurrent requests and scores them per model version in one call."""

    def __init__(
        self,
        max_rows: int,
        metrics: ServingMetrics,
        complete: Complete,
        *,
        executor: Executor | None = None,
        log_failures: bool = True,
    ) -> None:
        """``executor`` runs the model calls (default: one thread); ``log_failures``: log failed batches."""
        self._max_rows = max_rows
        self._metrics = metrics
        self._complete = complete
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._busy = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor: Executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._log_failures = log_failures
        self._busy_since = 0.0

    def submit(self, served: ServedModel, features: np.ndarray) -> asyncio.Future[Sequence[Any]]:
        """A future of ``complete``'s results for these rows scored by ``served``, batched with others.

        Cancelling the future before its batch is answered leaves its rows out of ``complete``.
        """
        if self._closed:
            raise RuntimeError("the model batcher is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Sequence[Any]] = loop.create_future()
        self._pending.append(_Pending(served, features, future))
        self._idle.clear()
        if not self._busy and not self._scheduled:
            self._scheduled = True
            # After the callbacks already queued on this loop turn, so their requests join the batch.
            loop.call_soon(self._flush, loop)
        return future

    def busy_for(self) -> float:
        """Seconds the model call in progress has been running (0 when none is)."""
        return time.monotonic() - self._busy_since if self._busy else 0.0

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new rows, answer the batches already queued, then stop the model thread.

        Args:
            timeout_s: Wait at most this long for a model call in progress (None: as long as it takes);
                a call that outlives it is left to its (daemon) thread.
        """
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            logger.warning("a model call outlived the shutdown's %s s; not waiting for it", timeout_s)
            self._executor.shutdown(wait=False)
            return
        self._executor.shutdown(wait=True)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        # Callers that went away (client disconnected) are dropped before the batch's version is chosen.
        self._pending = [item for item in self._pending if not item.future.done()]
        if self._busy:
            return
        if not self._pending:
            self._idle.set()
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
        self._busy_since = time.monotonic()
        try:
            call = self._executor.submit(served.probabilities, features)
        except Exception as exc:  # the executor is shut down: nothing will score these rows
            call = Future()
            call.set_exception(exc)
            self._finish(loop, call, group, features)
            return
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
        # Only the callers still waiting are completed and answered, in this same callback.
        live = [item for item in group if not item.future.done()]
        try:
            proba = call.result()
            if live:
                if len(live) < len(group):
                    features, proba = _rows_of(live, group, proba)
                results = self._complete(live[0].served, features, proba)
        except Exception as exc:
            if self._log_failures:
                logger.exception("version %s failed to score a batch", group[0].served.version)
            for item in live:
                item.future.set_exception(exc)
        else:
            self._metrics.model_batch_rows.observe(len(proba))
            start = 0
            for item in live:
                end = start + len(item.features)
                item.future.set_result(results[start:end])
                start = end
        self._flush(loop)


def _rows_of(live: list[_Pending], group: list[_Pending], proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The features and probabilities of the ``live`` callers among the scored ``group``."""
    starts = np.cumsum([0] + [len(item.features) for item in group])
    kept = [i for i, item in enumerate(group) if item in live]  # _Pending compares by identity
    rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in kept])
    return np.concatenate([group[i].features for i in kept]), proba[rows]
