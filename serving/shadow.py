"""Shadow scoring: the challenger scores live requests off the request path, best effort, bounded.

After a batch of requests is answered (``PredictionService``), its rows are offered here: a sampled
share (``LiveSettings.shadow_share``) is appended to a bounded queue in O(1) and the event loop moves
on. One shadow thread takes up to ``shadow_batch_rows`` rows at a time and scores them in a model
thread of their own, waiting at most ``shadow_timeout_s``; the answers go to ``shadow_batches``
(same prediction ids, the shadow's version; a row per written batch) through a writer thread of their
own, outside the durable journal. Nothing here can delay or change a champion answer:

- under overload the queue fills and new rows are **shed** (counted), never waited for;
- a shadow model that **raises**, **hangs** (the call outlives its deadline: the rows count as timed
  out, and rows for that model are shed until the call returns) or answers **nonsense** (not one finite
  probability in [0, 1] per row) is counted by kind, and reported once per episode (the callback sends
  ``reggaeton.serving.challenger_failing``) until it answers well again;
- shadow rows the database cannot take are dropped (counted): they never wait in the spool.

The same thread also scores the champion on the requests a canary answered, so every request has both
models' answers (paired evidence for the live gate), and the writer flushes :class:`LiveStats` to
``live_stats`` every ``stats_interval_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
from sqlalchemy import Engine, insert

from adapters.prediction_log import (
    STATS_SHADOW,
    encode_answers,
    live_stats,
    shadow_batch_row,
    shadow_batches,
)
from reggaeton.settings import LiveSettings
from serving.holder import ServedModel
from serving.live import LiveStats
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

RAISED: Final = "raised"
TIMEOUT: Final = "timeout"
INVALID: Final = "invalid"
# Called (from the shadow thread) when a model starts failing: (role, version, kind, detail).
FailingListener = Callable[[str, str, str, str], None]

_WRITE_ROWS: Final = 2000  # shadow rows per write, at most
# The shadow thread wakes this often, or as soon as a full batch is queued: a model call per request
# batch cost as much again as the request (profiled: a 25-row call, its future, its checks and a
# thread wake-up per micro-batch held the GIL for a tenth of the server's time at 100 % shadow).
_BATCH_WAIT_S: Final = 0.1
_WRITE_INTERVAL_S: Final = 0.5  # a quiet writer still writes this often
_PENDING_STATS_MAX: Final = 1000  # stats rows kept for the next try while the database refuses them


class InvalidAnswer(ValueError):
    """A model's answer that is not one finite probability in [0, 1] per row."""


def checked_probabilities(proba: Any, rows: int) -> np.ndarray:
    """The answer as a float array, or :class:`InvalidAnswer` saying what is wrong with it."""
    try:
        values = np.asarray(proba, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidAnswer(f"not numbers: {exc}") from None
    if values.shape != (rows,):
        raise InvalidAnswer(f"expected {rows} probabilities, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        bad = values[~(np.isfinite(values) & (values >= 0) & (values <= 1))]
        raise InvalidAnswer(f"{len(bad)} of {rows} answers not finite in [0, 1], e.g. {bad[0]!r}")
    return values


class ModelThread:
    """One daemon thread calling one model, so a call that hangs blocks only itself (not the process)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[np.ndarray], Any], np.ndarray, Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._pending: Future[Any] | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A call has not returned yet (one that outlived its deadline included)."""
        return self._pending is not None and not self._pending.done()

    def submit(self, fn: Callable[[np.ndarray], Any], features: np.ndarray, /) -> Future[Any]:
        """Call ``fn(features)`` in the thread."""
        future: Future[Any] = Future()
        if self._stopped:
            future.set_exception(RuntimeError("the model thread is stopped"))
            return future
        self._pending = future
        self._jobs.put((fn, features, future))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Stop after the call in progress (a daemon thread: a hung call never holds the process)."""
        self._stopped = True
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, features, future = job
            try:
                future.set_result(fn(features))
            except BaseException as exc:
                future.set_exception(exc)


@dataclass(slots=True, eq=False)
class _Item:
    served: ServedModel  # who scores these rows (the challenger; the champion for a canary's rows)
    ids: list[str]
    created_at: datetime
    features: np.ndarray


class Episodes:
    """Failing episodes per (role, version): the first failure opens one, a good answer closes it."""

    def __init__(self, metrics: ServingMetrics, on_failing: FailingListener | None) -> None:
        self._metrics = metrics
        self._on_failing = on_failing
        self._open: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def failed(self, role: str, version: str, kind: str, detail: str) -> None:
        """A failure; the first of an episode is logged, counted and announced."""
        with self._lock:
            if (role, version) in self._open:
                return
            self._open.add((role, version))
        self._metrics.challenger_episodes.labels(role=role).inc()
        logger.error("%s version %s is failing (%s): %s", role, version, kind, detail)
        if self._on_failing is not None:
            self._on_failing(role, version, kind, detail[:2000])

    def answered(self, role: str, version: str) -> None:
        """A good answer: the episode (if any) is over."""
        if self._open:
            with self._lock:
                if (role, version) in self._open:
                    self._open.discard((role, version))
                    logger.info("%s version %s answers again", role, version)


@dataclass(slots=True, eq=False)
class _Answers:
    """One scored item's answers, encoded: a JSON array's items without the brackets."""

    served: ServedModel
    created_at: datetime
    rows: int
    items: bytes


class ShadowWriter:
    """Writes shadow answers and live stats in a thread of its own; what the database refuses is dropped.

    Each scored item's answers are encoded to JSON at once (one C call, in the shadow thread); a write
    joins the queued items of each model into one ``shadow_batches`` row: one insert per model per write,
    whatever the rows (see ``adapters.prediction_log.shadow_batches``).
    """

    def __init__(
        self, engine: Engine, metrics: ServingMetrics, stats: LiveStats, policy: LiveSettings
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._stats = stats
        self._policy = policy
        self._queue: deque[_Answers] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()  # the row count (the shadow thread adds, the writer takes)
        self._wake = threading.Event()
        self._closed = False
        self._pending_stats: list[dict[str, Any]] = []
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="shadow-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def put(self, item: _Item, proba: np.ndarray, labels: np.ndarray) -> None:
        """Queue one scored item's answers (shadow thread); beyond the bound they are dropped, counted."""
        rows = len(item.ids)
        if self._queued_rows + rows > self._policy.shadow_queue_rows:
            self._metrics.shadow_rows.labels(outcome="dropped").inc(rows)
            return
        encoded = encode_answers(item.ids, proba.tolist(), labels.tolist())
        self._queue.append(_Answers(item.served, item.created_at, rows, encoded[1:-1]))
        with self._lock:
            self._queued_rows += rows
            full = self._queued_rows >= _WRITE_ROWS
        if full:
            self._wake.set()

    def close(self, timeout_s: float) -> None:
        """Write what is queued and the last stats, within ``timeout_s``."""
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        next_stats = time.monotonic() + self._policy.stats_interval_s
        while True:
            self._wake.wait(_WRITE_INTERVAL_S)
            self._wake.clear()
            closing = self._closed
            while self._queue:
                self._write_rows()
            if closing or time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self._policy.stats_interval_s
                self._write_stats()
            if closing:
                return

    def _take(self) -> list[_Answers]:
        """The oldest queued items, up to ``_WRITE_ROWS`` rows (at least one item)."""
        taken = [self._queue.popleft()]
        rows = taken[0].rows
        while self._queue and rows + self._queue[0].rows <= _WRITE_ROWS:
            taken.append(self._queue.popleft())
            rows += taken[-1].rows
        with self._lock:
            self._queued_rows -= rows
        return taken

    def _write_rows(self) -> None:
        taken = self._take()
        by_model: dict[int, list[_Answers]] = {}
        for answers in taken:
            by_model.setdefault(id(answers.served), []).append(answers)
        batches = [
            shadow_batch_row(
                group[0].served.version,
                group[0].served.name,
                max(answers.created_at for answers in group),
                sum(answers.rows for answers in group),
                (b"[" + b",".join(answers.items for answers in group) + b"]").decode(),
            )
            for group in by_model.values()
        ]
        rows = sum(answers.rows for answers in taken)
        try:
            with self._engine.begin() as connection:
                connection.execute(insert(shadow_batches), batches)
        except Exception as exc:  # best effort: the rows are dropped, never retried into the spool
            self._metrics.shadow_rows.labels(outcome="dropped").inc(rows)
            if not self._failing:
                self._failing = True
                logger.warning("shadow answers not written (dropped until the log takes them): %r", exc)
            return
        self._failing = False
        self._metrics.shadow_rows.labels(outcome="written").inc(rows)

    def _write_stats(self) -> None:
        rows = self._pending_stats + [row for row in self._stats.take() if row["attempts"] or row["shed"]]
        if not rows:
            return
        try:
            with self._engine.begin() as connection:
                connection.execute(insert(live_stats), rows)
        except Exception as exc:
            self._pending_stats = rows[-_PENDING_STATS_MAX:]
            logger.warning("live stats not written (kept for the next interval): %r", exc)
            return
        self._pending_stats = []


class ShadowScorer:
    """The bounded shadow queue and the thread that scores it (see the module docstring)."""

    def __init__(
        self,
        policy: LiveSettings,
        metrics: ServingMetrics,
        stats: LiveStats,
        writer: ShadowWriter,
        on_failing: FailingListener | None = None,
    ) -> None:
        self._policy = policy
        self._metrics = metrics
        self._stats = stats
        self._writer = writer
        self._episodes = Episodes(metrics, on_failing)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wake = threading.Event()
        self._closed = False
        self._models: dict[int, tuple[ServedModel, ModelThread]] = {}
        self._rng = np.random.default_rng()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        metrics.shadow_queue_rows.set_function(lambda: self._queued_rows)

    @property
    def episodes(self) -> Episodes:
        """The failing episodes (the canary's failures are reported through the same tracker)."""
        return self._episodes

    def start(self) -> None:
        """Start the shadow thread and the writer."""
        self._writer.start()
        self._thread.start()

    def offer(self, served: ServedModel, ids: list[str], created_at: datetime, features: np.ndarray) -> None:
        """Queue a sampled share of an answered batch for ``served`` to score; O(1), never waits.

        Called on the event loop, right after the batch's answers are set.
        """
        share = self._policy.shadow_share
        if share < 1.0:
            chosen = np.flatnonzero(self._rng.random(len(ids)) < share)
            if not len(chosen):
                return
            ids = [ids[i] for i in chosen]
            features = features[chosen]
        rows = len(ids)
        if self._closed or self._queued_rows + rows > self._policy.shadow_queue_rows:
            self._shed(served, rows)
            return
        self._queue.append(_Item(served, ids, created_at, features))
        self._queued_rows += rows
        if self._queued_rows >= self._policy.shadow_batch_rows:
            self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking rows, score what is queued (bounded by ``timeout_s``), write it out."""
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._writer.close(timeout_s)

    def _shed(self, served: ServedModel, rows: int) -> None:
        self._metrics.shadow_rows.labels(outcome="shed").inc(rows)
        self._stats.add(STATS_SHADOW, served, shed=rows)

    def _run(self) -> None:
        while True:
            self._wake.wait(_BATCH_WAIT_S)
            self._wake.clear()
            while self._queue:
                self._score(self._take())
            if self._closed and not self._queue:
                return

    def _take(self) -> list[_Item]:
        """The oldest items scored by one model, up to ``shadow_batch_rows`` rows (at least one item)."""
        first = self._queue.popleft()
        items, rows = [first], len(first.ids)
        while self._queue and self._queue[0].served is first.served:
            if rows + len(self._queue[0].ids) > self._policy.shadow_batch_rows:
                break
            item = self._queue.popleft()
            items.append(item)
            rows += len(item.ids)
        self._queued_rows -= rows
        return items

    def _model_thread(self, served: ServedModel) -> ModelThread:
        found = self._models.get(id(served))
        if found is None or found[0] is not served:
            # One thread per model: a new version gets a fresh one (a hung call keeps only its own).
            self._models = {key: value for key, value in self._models.items() if value[1].busy}
            found = self._models[id(served)] = (served, ModelThread(f"shadow-model-{served.version}"))
        return found[1]

    def _score(self, items: list[_Item]) -> None:
        served = items[0].served
        role = STATS_SHADOW
        rows = sum(len(item.ids) for item in items)
        thread = self._model_thread(served)
        if thread.busy:  # its last call outlived the deadline and has not returned: do not pile up
            self._shed(served, rows)
            return
        features = items[0].features if len(items) == 1 else np.concatenate([item.features for item in items])
        started = time.perf_counter()
        call = thread.submit(served.probabilities, features)
        kind, detail, proba = None, "", None
        try:
            proba = checked_probabilities(call.result(timeout=self._policy.shadow_timeout_s), rows)
        except FutureTimeout:
            kind, detail = TIMEOUT, f"no answer within {self._policy.shadow_timeout_s:g} s"
        except InvalidAnswer as exc:
            kind, detail = INVALID, str(exc)
        except Exception as exc:
            kind, detail = RAISED, f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        self._metrics.shadow_batch_seconds.observe(elapsed)
        if kind is not None or proba is None:
            assert kind is not None
            self._metrics.shadow_rows.labels(outcome=kind).inc(rows)
            counter = {RAISED: "raised", TIMEOUT: "timeouts", INVALID: "invalid"}[kind]
            self._stats.add(role, served, attempts=rows, latency_sum_s=elapsed, **{counter: rows})
            self._episodes.failed(role, served.version, kind, detail)
            return
        self._metrics.shadow_rows.labels(outcome="scored").inc(rows)
        self._stats.add(role, served, attempts=rows, rows=rows, latency_sum_s=elapsed)
        self._episodes.answered(role, served.version)
        labels = (proba >= served.threshold).astype(np.int64)
        start = 0
        for item in items:
            end = start + len(item.ids)
            self._writer.put(item, proba[start:end], labels[start:end])
            start = end
