"""The prediction log writer: a durable journal plus a bounded in-process queue, drained by one thread.

Requests hand their rows over without waiting for the database. With the journal (the default), each
model batch is appended to it before its callers are answered, and kept in memory for the writer too.
When the database is slow or down the in-memory queue fills; then it is dropped and the writer reads
the rows back from the journal (spilled), so memory stays bounded while the journal grows up to its
own bound. When the journal is full or cannot be written, or, without a journal, when the queue is
full, a new request is refused at once (:class:`LogUnavailableError`, answered 503): it never waits.
A failed write is retried with the rows kept; a write that has not returned after ``write_stall_s`` (a
lock held elsewhere, a server that stopped answering) reports the database unavailable too, while the
writer keeps waiting for it. Rows are inserted with ``ON CONFLICT DO NOTHING`` on
the prediction id, so replaying the journal after a crash inserts each row exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import Engine

from serving.log_rows import Insert, LogEntry, Position
from serving.metrics import ServingMetrics
from serving.spool import Journal

logger = logging.getLogger(__name__)

_MAX_RETRY_DELAY_S = 2.0


class LogUnavailableError(RuntimeError):
    """The log cannot take more rows now: the spool is full or unwritable (or, without one, the queue)."""


# Called on the event loop with (available, detail) when database writes start failing / succeed again.
StateListener = Callable[[bool, str], None]


class PredictionLogWriter:
    """Journal (optional) plus a bounded in-memory queue, and one writer task inserting through a thread."""

    def __init__(
        self,
        engine: Engine,
        metrics: ServingMetrics,
        *,
        capacity_rows: int,
        batch_rows: int,
        flush_interval_s: float,
        write_stall_s: float = 5.0,
        journal: Journal | None = None,
        retry_after_s: float = 1.0,
        close_timeout_s: float = 10.0,
        on_state: StateListener | None = None,
    ) -> None:
        self._engine = engine
        self._insert = Insert(engine)
        self._metrics = metrics
        self._capacity = capacity_rows
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._write_stall_s = write_stall_s
        self._journal = journal
        self._retry_after_s = retry_after_s
        self._close_timeout_s = close_timeout_s
        self._on_state = on_state
        self._buffer: deque[LogEntry] = deque()
        self._queued_rows = 0  # rows reserved and not yet written (including the batch being written)
        self._buffered_rows = 0  # rows in the buffer, not yet taken by the writer
        self._submitted = 0  # entries submitted since start
        self._written = 0  # entries submitted since start and written
        self._spilled = False  # the rows after the cursor are read back from the journal, not the buffer
        self._cursor: Position | None = None  # the journal is committed to the database up to here
        self._oldest: datetime | None = None  # creation time of the oldest row not yet in the database
        self._journal_error: tuple[float, str] | None = None  # (monotonic time, error) of a failed append
        self._db_error: str | None = None  # why the database is unavailable (the last write error, a stall)
        self._stalled = False  # _db_error is a write that has not returned yet, not an error
        self._flushed: list[tuple[int, asyncio.Future[None]]] = []
        self._data = asyncio.Event()
        self._batch_ready = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction-log")
        self._task: asyncio.Task[None] | None = None
        # Read at scrape time.
        metrics.log_queue_rows.set_function(lambda: self._queued_rows)
        metrics.log_database_up.set_function(lambda: 0 if self._db_error else 1)
        metrics.log_spool_bytes.set_function(lambda: 0 if journal is None else journal.bytes)
        metrics.log_spool_oldest_age.set_function(self._oldest_age)

    @property
    def durable(self) -> bool:
        """Whether answered rows are journaled before their response."""
        return self._journal is not None

    def start(self) -> None:
        """Open the journal (its rows left by an earlier process are replayed first); start the writer."""
        if self._journal is not None:
            backlog = self._journal.open()
            self._cursor = backlog or self._journal.end
            if backlog is not None:
                self._spilled = True
                # The oldest unwritten row's age is reported from the start, not from the first replay.
                size = self._journal.segment_size(backlog.segment)
                first = self._journal.read(backlog, size, 1).entries
                self._oldest = first[0].created_at if first else None
                logger.info("replaying the prediction spool left in %s", self._journal.directory)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="prediction-log-writer")

    def unavailable(self, rows: int = 1) -> str | None:
        """Why the log cannot take ``rows`` more rows now, or None when it can."""
        journal = self._journal
        if journal is None:
            # A request larger than the whole queue still gets in once the queue is empty.
            if self._queued_rows and self._queued_rows + rows > self._capacity:
                return f"the prediction log queue is full ({self._queued_rows} rows): {self._db_state()}"
            return None
        if self._journal_error is not None:
            failed_at, error = self._journal_error
            if time.monotonic() - failed_at < self._retry_after_s:
                return f"the prediction spool cannot be written: {error}"
        if journal.full():
            held = f"{journal.bytes} of {journal.max_bytes} bytes"
            return f"the prediction spool is full ({held}): {self._db_state()}"
        return None

    def reserve(self, rows: int) -> None:
        """Hold room for ``rows`` before they are scored, or refuse at once; never waits.

        Reserved rows count as queued until :meth:`put` hands them over and they are written, or until
        :meth:`release` gives them back (the request was not answered).

        Raises:
            LogUnavailableError: the spool (or, without one, the queue) cannot take them.
        """
        if self._closing:
            raise RuntimeError("the prediction log is closed")
        reason = self.unavailable(rows)
        if reason is not None:
            if self._journal is None:
                self._metrics.log_queue_full.inc()
            self._metrics.log_refused.inc()
            raise LogUnavailableError(reason)
        self._queued_rows += rows

    def release(self, rows: int) -> None:
        """Give back reserved rows that will not be put (their request was not answered)."""
        self._queued_rows -= rows

    def put(self, entry: LogEntry) -> None:
        """Journal and queue the rows of a model batch about to be answered (on the event loop).

        With a journal, the batch is written there (one ``write``) before this returns.

        Raises:
            LogUnavailableError: the journal refused the write; the batch must not be answered.
        """
        if self._closing:
            raise RuntimeError("the prediction log is closed")
        size = len(entry.ids)
        if self._journal is not None:
            try:
                entry.end = self._journal.append(entry)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
                self._journal_error = (time.monotonic(), error)
                self._metrics.log_spool_errors.inc()
                logger.error("spool write failed; refusing for %s s: %s", self._retry_after_s, error)
                raise LogUnavailableError(f"the prediction spool cannot be written: {error}") from exc
            self._journal_error = None
            self._metrics.log_rows_spooled.inc(size)
        if self._oldest is None:
            self._oldest = entry.created_at
        self._submitted += 1
        self._data.set()
        if self._spilled:
            return
        if self._journal is not None and self._buffered_rows + size > self._capacity:
            # The queue in memory is full: drop it; the writer reads these rows back from the journal.
            self._metrics.log_queue_full.inc()
            logger.warning("prediction log queue full; the writer reads the spool from disk until caught up")
            self._buffer.clear()
            self._buffered_rows = 0
            self._spilled = True
            self._batch_ready.set()
            return
        self._buffer.append(entry)
        self._buffered_rows += size
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
        """Write everything queued, then stop the writer.

        With a journal, waiting is bounded (``close_timeout_s``): rows not yet in the database stay in
        the journal and are replayed by the next start.
        """
        self._closing = True
        self._data.set()
        self._batch_ready.set()
        if self._task is not None:
            if self._journal is None:
                await self._task
            else:
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), timeout=self._close_timeout_s)
                except TimeoutError:
                    logger.warning("prediction log database unavailable at shutdown; rows stay in the spool")
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
        self._executor.shutdown(wait=True)
        if self._journal is not None:
            task = self._task
            caught_up = not self._spilled and not self._buffer and task is not None and not task.cancelled()
            self._journal.close(self._cursor if caught_up else None)

    def _db_state(self) -> str:
        if self._db_error is not None:
            return f"the log database is unavailable ({self._db_error})"
        return "the log database is not keeping up"

    def _oldest_age(self) -> float:
        if self._oldest is None:
            return 0.0
        return max(0.0, time.time() - self._oldest.timestamp())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._spilled:
                await self._replay_step(loop)
                continue
            if not self._buffer:
                if self._closing:
                    return
                self._data.clear()
                await self._data.wait()
                continue
            if self._buffered_rows < min(self._batch_rows, self._capacity) and not (
                self._closing or self._flushed
            ):
                # Collect for a moment so a quiet server still writes in batches.
                self._batch_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_ready.wait(), timeout=self._flush_interval_s)
            entries, rows = self._take()
            if not entries:  # the queue was dropped meanwhile (spilled)
                continue
            self._oldest = entries[0].created_at
            await self._write_with_retry(loop, entries)
            self._committed(len(entries), rows, entries[-1].end)

    async def _replay_step(self, loop: asyncio.AbstractEventLoop) -> None:
        """Insert the next batch of rows read back from the journal (or notice the writer caught up)."""
        journal, cursor = self._journal, self._cursor
        assert journal is not None and cursor is not None
        end = journal.end
        if cursor >= end:
            self._spilled = False  # every later row will be in the queue
            self._oldest = None
            logger.info("prediction log caught up with the spool")
            return
        if cursor.segment < end.segment:
            limit = journal.segment_size(cursor.segment)
            if cursor.offset >= limit:
                following = journal.segment_after(cursor.segment)
                self._cursor = end if following is None else Position(following, 0)
                journal.free_before(self._cursor)
                return
        else:
            limit = end.offset
        chunk = await loop.run_in_executor(self._executor, journal.read, cursor, limit, self._batch_rows)
        rows = sum(len(entry.ids) for entry in chunk.entries)
        if chunk.entries:
            self._oldest = chunk.entries[0].created_at
            await self._write_with_retry(loop, chunk.entries)
            self._metrics.log_rows_replayed.inc(rows)
        if cursor < journal.backlog_end:  # left by an earlier process: not queued in this one
            self._metrics.log_rows_written.inc(rows)
            self._cursor = chunk.end
            journal.free_before(chunk.end)
        else:
            self._committed(len(chunk.entries), rows, chunk.end)

    def _take(self) -> tuple[list[LogEntry], int]:
        entries: list[LogEntry] = []
        rows = 0
        while self._buffer and (not entries or rows + len(self._buffer[0].ids) <= self._batch_rows):
            entry = self._buffer.popleft()
            entries.append(entry)
            rows += len(entry.ids)
        self._buffered_rows -= rows
        return entries, rows

    def _committed(self, entries: int, rows: int, end: Position | None) -> None:
        self._written += entries
        self._queued_rows -= rows
        self._metrics.log_rows_written.inc(rows)
        if self._journal is not None and end is not None:
            self._cursor = end
            self._journal.free_before(end)
        if self._buffer:
            self._oldest = self._buffer[0].created_at
        elif not self._spilled:
            self._oldest = None
        self._wake_flushed()

    async def _write_with_retry(self, loop: asyncio.AbstractEventLoop, entries: list[LogEntry]) -> None:
        delay = 0.05
        while True:
            try:
                await self._await_write(loop.run_in_executor(self._executor, self._write, entries))
            except Exception as exc:
                self._metrics.log_write_errors.inc()
                if self._db_error is None or self._stalled:
                    logger.exception("prediction log write failed; rows kept, retrying")
                self._stalled = False
                self._unavailable(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY_S)
                continue
            if self._db_error is not None:
                logger.info("prediction log database writable again after: %s", self._db_error)
                if self._on_state is not None:
                    self._on_state(True, self._db_error)
                self._db_error = None
                self._stalled = False
            return

    async def _await_write(self, write: asyncio.Future[None]) -> None:
        """Wait for a write; one not returned after ``write_stall_s`` marks the database unavailable."""
        try:
            await asyncio.wait_for(asyncio.shield(write), timeout=self._write_stall_s)
        except TimeoutError:
            if not write.done():  # else it ended at the deadline, or raised TimeoutError itself
                stall = f"a write has not returned for {self._write_stall_s:g} s"
                logger.warning("prediction log: %s; rows kept, waiting", stall)
                self._stalled = True
                self._unavailable(stall)
            await write

    def _unavailable(self, reason: str) -> None:
        """Record why the database cannot take rows; the state listener hears when it first becomes so."""
        first = self._db_error is None
        self._db_error = reason[:500]
        if first and self._on_state is not None:
            self._on_state(False, self._db_error)

    def _write(self, entries: list[LogEntry]) -> None:
        parameters = self._insert.parameters(entries)
        with self._engine.begin() as connection:
            connection.exec_driver_sql(self._insert.sql, parameters)

    def _wake_flushed(self) -> None:
        if self._flushed:
            still: list[tuple[int, asyncio.Future[None]]] = []
            for target, done in self._flushed:
                if self._written >= target:
                    if not done.done():
                        done.set_result(None)
                else:
                    still.append((target, done))
            self._flushed = still
