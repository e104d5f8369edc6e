"""The prediction service: score songs with the served model and hand the rows to the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
from sqlalchemy import Engine

from adapters.prediction_log import ROUTE_CANARY, ROUTE_CHAMPION, STATS_CANARY, STATS_CHAMPION
from reggaeton.ids import time_ordered_ids
from reggaeton.settings import LiveSettings, Settings
from serving.batching import MicroBatcher
from serving.cache import ModelCache
from serving.challenger import ChallengerRefresher
from serving.holder import ModelHolder, ServedModel
from serving.live import LiveAssignment, LiveHolder, LiveStats
from serving.log_rows import LogEntry
from serving.log_writer import PredictionLogWriter
from serving.metrics import ServingMetrics
from serving.refresher import Refresher
from serving.shadow import (
    INVALID,
    RAISED,
    TIMEOUT,
    Episodes,
    InvalidAnswer,
    ModelThread,
    ShadowScorer,
    checked_probabilities,
)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class NoModelError(RuntimeError):
    """No model has been loaded yet (registry unreachable at start and no cache)."""


# The live_stats counter a canary failure of each kind adds to.
_FAILURE_COUNTER: Final = {RAISED: "raised", TIMEOUT: "timeouts", INVALID: "invalid"}


@dataclass
class Live:
    """The challenger under live evaluation, as the prediction service sees it."""

    holder: LiveHolder
    shadow: ShadowScorer
    stats: LiveStats
    policy: LiveSettings

    @property
    def episodes(self) -> Episodes:
        """Failing episodes of the challenger (shadow and canary share them)."""
        return self.shadow.episodes

    def shadow_answered(
        self,
        served: ServedModel,
        champion: ServedModel | None,
        ids: list[str],
        created_at: datetime,
        features: np.ndarray,
        route: str,
    ) -> None:
        """Offer an answered batch to the other model: the challenger for the champion's, and back.

        Args:
            served: The model that answered.
            champion: The champion now (it scores what a canary answered).
            ids: The batch's prediction ids.
            created_at: Its rows' time.
            features: Its songs.
            route: Who answered (``prediction_log.ROUTES``).
        """
        assignment = self.holder.current
        if assignment is None:
            return
        if route == ROUTE_CHAMPION:
            if assignment.version != served.version:
                self.shadow.offer(assignment.served, ids, created_at, features)
        elif champion is not None and champion.version != served.version:
            self.shadow.offer(champion, ids, created_at, features)


@dataclass
class _VersionCounts:
    """Predictions of one version so far, and its two Prometheus counters."""

    positive_counter: Any
    negative_counter: Any
    positives: int = 0
    total: int = 0


class PredictionService:
    """Pure prediction plus injected side effects (batching, logging, metrics, the live challenger).

    A request reserves room for its rows in the prediction log, then waits for its batch. The batch's
    bookkeeping (labels, ids, one log entry, the counters) runs once, in :meth:`_complete`, for the
    callers still waiting, in the same event-loop callback that answers them: a row is logged if and
    only if it is answered. A request that ends otherwise gives its reservation back.

    While a challenger is under live evaluation (``live``), each answered batch is also offered to the
    shadow scorer (the other model scores it off the request path), and during a canary a share of the
    requests is answered by the challenger through a batcher and model thread of its own: when it
    raises, answers nonsense or is later than ``canary_timeout_s``, the champion answers (counted), so a
    failing canary fails no request.
    """

    def __init__(
        self,
        holder: ModelHolder,
        log: PredictionLogWriter,
        metrics: ServingMetrics,
        max_rows: int,
        live: Live | None = None,
    ):
        self.holder = holder
        self.log = log
        self.metrics = metrics
        self.batcher = MicroBatcher(max_rows, metrics, self._complete)
        self.live = live
        self.canary_batcher = MicroBatcher(
            max_rows,
            metrics,
            self._complete_canary,
            executor=ModelThread("canary-model"),
            log_failures=False,
        )
        self._counts: dict[str, _VersionCounts] = {}
        self._canary_outcomes: dict[str, Any] = {}

    async def predict(
        self, features: np.ndarray, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> Sequence[dict[str, Any]]:
        """Predictions for an (n, 7) array, in order; queued in the log before they are returned.

        Args:
            features: The songs, in schema order.
            headers: The request's raw headers (a canary reads the client key there).

        Raises:
            NoModelError: before the first model is loaded.
            LogUnavailableError: the prediction log cannot take these rows now (nothing was answered).
        """
        served = self.holder.current  # read once: the whole request uses this version
        if served is None:
            raise NoModelError("no model loaded yet")
        rows = len(features)
        self.log.reserve(rows)  # refuses at once (LogUnavailableError) when the log cannot take them
        assignment = self.live.holder.current if self.live is not None else None
        if assignment is None or assignment.version == served.version:
            answer = self.batcher.submit(served, features)
            try:
                return await answer
            finally:
                if not answer.done() or answer.cancelled() or answer.exception() is not None:
                    self.log.release(rows)  # not answered, so not logged
        assert self.live is not None
        started = time.perf_counter()
        canary = assignment.routes_to_canary(headers)
        answers: list[asyncio.Future[Sequence[Any]]] = []
        try:
            if canary:
                result = await self._canary(assignment, served, features, answers)
            else:
                answers.append(self.batcher.submit(served, features))
                result = await answers[-1]
        finally:
            last = answers[-1] if answers else None
            if last is None or not last.done() or last.cancelled() or last.exception() is not None:
                self.log.release(rows)
        elapsed = time.perf_counter() - started
        if canary:
            self.live.stats.add_answer(STATS_CANARY, assignment.served, rows, elapsed)
        else:
            self.live.stats.add_answer(STATS_CHAMPION, served, rows, elapsed)
        return result

    async def _canary(
        self,
        assignment: LiveAssignment,
        champion: ServedModel,
        features: np.ndarray,
        answers: list[asyncio.Future[Sequence[Any]]],
    ) -> Sequence[Any]:
        """The canary's answer, or the champion's when the canary fails (``answers``: the futures tried)."""
        assert self.live is not None
        timeout = self.live.policy.canary_timeout_s
        kind, detail = TIMEOUT, f"a call has been running over {timeout:g} s"
        if self.canary_batcher.busy_for() <= timeout:  # not stuck in a call that outlived its deadline
            future = self.canary_batcher.submit(assignment.served, features)
            answers.append(future)
            try:
                done, _ = await asyncio.wait({future}, timeout=timeout)
            except asyncio.CancelledError:
                future.cancel()  # the client went away: not answered, so not logged
                raise
            if not done and future.cancel():
                kind, detail = TIMEOUT, f"no answer within {timeout:g} s"
            elif (error := future.exception()) is None:
                self._canary_outcome("answered").inc()
                self.live.episodes.answered(STATS_CANARY, assignment.version)
                return future.result()
            else:
                kind = INVALID if isinstance(error, InvalidAnswer) else RAISED
                detail = f"{type(error).__name__}: {error}"
        self._canary_outcome(f"fallback_{kind}").inc()
        self.live.stats.add(STATS_CANARY, assignment.served, **{_FAILURE_COUNTER[kind]: 1})
        self.live.episodes.failed(STATS_CANARY, assignment.version, kind, detail)
        answers.append(self.batcher.submit(champion, features))
        return await answers[-1]

    def _canary_outcome(self, outcome: str) -> Any:
        counter = self._canary_outcomes.get(outcome)
        if counter is None:
            counter = self._canary_outcomes[outcome] = self.metrics.canary_requests.labels(outcome=outcome)
        return counter

    async def close(self) -> None:
        """Answer the batches in flight, then stop the model threads; call before closing the log."""
        await self.batcher.close()
        timeout = self.live.policy.canary_timeout_s if self.live is not None else 1.0
        await self.canary_batcher.close(timeout_s=max(1.0, timeout))

    def _complete(self, served: ServedModel, features: np.ndarray, proba: np.ndarray) -> list[dict[str, Any]]:
        return self._record(served, features, proba, ROUTE_CHAMPION)

    def _complete_canary(
        self, served: ServedModel, features: np.ndarray, proba: np.ndarray
    ) -> list[dict[str, Any]]:
        # Nonsense fails the batch before anything is logged: its callers fall back to the champion.
        return self._record(served, features, checked_probabilities(proba, len(features)), ROUTE_CANARY)

    def _record(
        self, served: ServedModel, features: np.ndarray, proba: np.ndarray, route: str
    ) -> list[dict[str, Any]]:
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
        self.log.put(LogEntry(ids, created_at, served.name, version, features, proba, labels, route))
        self._count(served, int(np.count_nonzero(labels)), len(labels))
        if self.live is not None:
            self.live.shadow_answered(served, self.holder.current, ids, created_at, features, route)
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
    live: Live
    challenger: ChallengerRefresher
