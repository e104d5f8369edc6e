"""The prediction log writer: a bounded in-process queue drained by batched writes in one thread.

Requests hand their rows over without waiting for the database. When the queue is full, requests wait
for room (backpressure, counted in a metric): a prediction is never answered without being logged,
and never silently dropped. A failed write is retried with the rows kept; shutdown drains the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
from sqlalchemy import Engine

from adapters.prediction_log import CREATED_AT, MODEL_NAME, MODEL_VERSION, PREDICTION_ID, predictions
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

_MAX_RETRY_DELAY_S = 5.0


@dataclass(slots=True)
class LogEntry:
    """The rows of one model batch: ids, features, probabilities and labels, same length and order."""

    ids: list[str]
    created_at: datetime
    model_name: str
    model_version: str
    features: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray

    def rows(self, created_at: Any) -> list[tuple[Any, ...]]:
        """One tuple per prediction, in ``ROW_COLUMNS`` order, with ``created_at`` as given."""
        name, version = self.model_name, self.model_version
        return [
            (pid, created_at, name, version, *values, proba, label)
            for pid, values, proba, label in zip(
                self.ids,
                self.features.tolist(),
                self.probabilities.tolist(),
                self.labels.tolist(),
                strict=True,
            )
        ]


# The order of ``LogEntry.rows``: every column of the ``predictions`` table.
ROW_COLUMNS: Final = (
    PREDICTION_ID,
    CREATED_AT,
    MODEL_NAME,
    MODEL_VERSION,
    *FEATURE_NAMES,
    PROBABILITY,
    PREDICTION,
)


# A value of each Python type the writer passes (``LogEntry.rows``), to find processors that keep it.
_SAMPLE: Final[dict[type, object]] = {float: 0.25, int: 1, str: "x"}


def _unchanged(process: Callable[[Any], Any], sample: object) -> bool:
    out = process(sample)
    return type(out) is type(sample) and out == sample


class _Insert:
    """The ``predictions`` INSERT compiled once for the engine's dialect and run on the driver's cursor.

    Letting SQLAlchemy compile and process every row's parameters cost about 10 us per row; plain
    tuples cost about 4. Values still go through the dialect's bind processors: ``created_at``'s once
    per entry, the others per row unless they return the values this writer passes unchanged (SQLite's
    ``Float`` processor turns a Python float into itself). A dialect with named parameters gets dicts.
    """

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = predictions.insert().compile(dialect=dialect, column_keys=list(ROW_COLUMNS))
        self.sql = str(compiled)
        self._order = [ROW_COLUMNS.index(key) for key in compiled.positiontup or ()]
        self._positional = bool(compiled.positional)
        processors = {
            name: predictions.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in ROW_COLUMNS
        }
        self._created_at = processors.pop(CREATED_AT) or (lambda value: value)
        self._per_row = [
            (ROW_COLUMNS.index(name), fn)
            for name, fn in processors.items()
            if fn is not None and not _unchanged(fn, _SAMPLE[predictions.c[name].type.python_type])
        ]

    def parameters(self, entries: list[LogEntry]) -> list[Any]:
        """The driver's parameters for every row of ``entries``."""
        rows = [row for entry in entries for row in entry.rows(self._created_at(entry.created_at))]
        if self._per_row:
            for i, row in enumerate(rows):
                values = list(row)
                for index, process in self._per_row:
                    values[index] = process(values[index])
                rows[i] = tuple(values)
        if not self._positional:
            return [dict(zip(ROW_COLUMNS, row, strict=True)) for row in rows]
        if self._order != list(range(len(ROW_COLUMNS))):
            return [tuple(row[i] for i in self._order) for row in rows]
        return rows


class PredictionLogWriter:
    """Bounded queue (in rows) plus one writer task that inserts batches through a single thread."""

    def __init__(
        self,
        engine: Engine,
        metrics: ServingMetrics,
        *,
        capacity_rows: int,
        batch_rows: int,
        flush_interval_s: float,
    ) -> None:
        self._engine = engine
        self._insert = _Insert(engine)
        self._metrics = metrics
        self._capacity = capacity_rows
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._buffer: deque[LogEntry] = deque()
        self._queued_rows = 0  # rows reserved and not yet written (including the batch being written)
        self._buffered_rows = 0  # rows in the buffer, not yet taken by the writer
        self._submitted = 0  # entries submitted since start
        self._written = 0  # entries written since start
        self._room: deque[asyncio.Future[None]] = deque()
        self._flushed: list[tuple[int, asyncio.Future[None]]] = []
        self._data = asyncio.Event()
        self._batch_ready = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction-log")
        self._task: asyncio.Task[None] | None = None
        metrics.log_queue_rows.set_function(lambda: self._queued_rows)  # read at scrape time

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="prediction-log-writer")

    def _no_room(self, rows: int) -> bool:
        # A request larger than the whole queue still gets in once the queue is empty.
        return bool(self._queued_rows) and self._queued_rows + rows > self._capacity

    async def reserve(self, rows: int) -> None:
        """Hold room for ``rows`` before they are scored; waits while the queue is full (counted).

        Reserved rows count as queued until :meth:`put` hands them over and they are written, or until
        :meth:`release` gives them back (the request was not answered), so the queue never holds more
        than ``capacity_rows`` (one request larger than that is let in alone).
        """
        if self._closing:
            raise RuntimeError("the prediction log is closed")
        if self._no_room(rows):
            self._metrics.log_queue_full.inc()
            self._batch_ready.set()  # write now rather than at the next flush interval
            while self._no_room(rows):
                room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._room.append(room)
                await room
        self._queued_rows += rows

    def release(self, rows: int) -> None:
        """Give back reserved rows that will not be put (their request was not answered)."""
        self._queued_rows -= rows
        self._wake_waiters()

    def put(self, entry: LogEntry) -> None:
        """Queue the rows of answered predictions, reserved before (on the event loop; never waits)."""
        if self._closing:
            raise RuntimeError("the prediction log is closed")
        size = len(entry.ids)
        self._buffer.append(entry)
        self._buffered_rows += size
        self._submitted += 1
        self._data.set()
        if self._buffered_rows >= self._batch_rows:
            self._batch_ready.set()

    async def flush(self) -> None:
        """Wait until every entry submitted before this call is written."""
        target = self._submitted
        if self._written >= target:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushed.append((target, done))
        self._batch_ready.set()
        await done

    async def close(self) -> None:
        """Write everything queued, then stop the writer."""
        self._closing = True
        self._data.set()
        self._batch_ready.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._data.clear()
                await self._data.wait()
                continue
            if self._buffered_rows < min(self._batch_rows, self._capacity) and not (
                self._closing or self._flushed or self._room
            ):
                # Collect for a moment so a quiet server still writes in batches.
                self._batch_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_ready.wait(), timeout=self._flush_interval_s)
            entries, rows = self._take()
            await self._write_with_retry(loop, entries)
            self._written += len(entries)
            self._queued_rows -= rows
            self._metrics.log_rows_written.inc(rows)
            self._wake_waiters()

    def _take(self) -> tuple[list[LogEntry], int]:
        entries: list[LogEntry] = []
        rows = 0
        while self._buffer and (not entries or rows + len(self._buffer[0].ids) <= self._batch_rows):
            entry = self._buffer.popleft()
            entries.append(entry)
            rows += len(entry.ids)
        self._buffered_rows -= rows
        return entries, rows

    async def _write_with_retry(self, loop: asyncio.AbstractEventLoop, entries: list[LogEntry]) -> None:
        delay = 0.05
        while True:
            try:
                await loop.run_in_executor(self._executor, self._write, entries)
                return
            except Exception:
                self._metrics.log_write_errors.inc()
                logger.exception("prediction log write failed; retrying in %.2f s (rows kept)", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY_S)

    def _write(self, entries: list[LogEntry]) -> None:
        parameters = self._insert.parameters(entries)
        with self._engine.begin() as connection:
            connection.exec_driver_sql(self._insert.sql, parameters)

    def _wake_waiters(self) -> None:
        while self._room and self._queued_rows < self._capacity:
            room = self._room.popleft()
            if not room.done():
                room.set_result(None)
        if self._flushed:
            still: list[tuple[int, asyncio.Future[None]]] = []
            for target, done in self._flushed:
                if self._written >= target:
                    if not done.done():
                        done.set_result(None)
                else:
                    still.append((target, done))
            self._flushed = still
