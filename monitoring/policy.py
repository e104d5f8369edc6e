"""The alert policy: a pure decision from chunk results to alerts (no I/O, no NannyML, no Prefect).

- ``degraded``: an estimated (CBPE) or realized performance metric is below its threshold for
  ``consecutive_chunks`` judged chunks in a row, the last of them new in this run (for realized
  performance, also a stored chunk whose late labels arrived since it was judged).
- ``drifted``: drift (multivariate, or at least ``drift_min_features`` drifting features) for
  ``consecutive_chunks`` chunks in a row, and no ``degraded`` alert: a warning, not a retrain.
- ``insufficient data``: a window or chunk too small to judge. It never counts as a breach, so a
  thin window can delay an alert but never raise a false one.

A version's state (``advance``) outlives the run: degraded until a run judges new chunks without a
``degraded`` alert, with one retrain request per version per debounce window.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from monitoring.estimation import ChunkResult


class AlertKind(enum.StrEnum):
    """What an alert says."""

    DEGRADED = "degraded"
    DRIFTED = "drifted"
    INSUFFICIENT_DATA = "insufficient data"


@dataclass(frozen=True)
class Policy:
    """Thresholds and counts of the alert policy (built from ``MonitoringSettings``)."""

    thresholds: Mapping[str, float]  # metric -> lowest acceptable value, e.g. {"roc_auc": 0.8}
    consecutive_chunks: int = 2
    min_rows: int = 200  # a chunk (or window) with fewer rows is not judged
    min_labelled: int = 50  # realized performance needs this many labelled rows in the chunk ...
    min_labelled_positives: int = 5  # ... with at least this many of each class
    drift_min_features: int = 5


@dataclass(frozen=True)
class Results:
    """The chunks of one run for one model version, plus earlier chunks that streaks may continue."""

    model_version: str
    chunks: Sequence[ChunkResult]
    history: Sequence[ChunkResult] = ()
    window_rows: int = 0  # rows read in the window (including a tail too small to be a chunk)
    window_start: datetime | None = None
    window_end: datetime | None = None
    # Position in ``history`` of the first chunk whose labels arrived since it was judged: realized
    # performance there is news, so a realized streak ending there alerts too. None: no late labels.
    relabelled_from: int | None = None


@dataclass(frozen=True)
class Alert:
    """One decision of the policy; ``payload()`` is what the Prefect event carries."""

    kind: AlertKind
    model_version: str
    metric: str
    value: float | None
    threshold: float | None
    window_start: datetime | None
    window_end: datetime | None
    source: str = ""  # "estimated", "realized", "drift" or "window"
    chunks: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """JSON-ready event payload: metric, value, threshold, model version and window."""
        return {
            "kind": str(self.kind),
            "metric": self.metric,
            "source": self.source,
            "value": self.value,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "window": {
                "start": self.window_start.isoformat() if self.window_start else None,
                "end": self.window_end.isoformat() if self.window_end else None,
                "chunks": self.chunks,
            },
            **({"details": dict(self.details)} if self.details else {}),
        }


def judged(chunk: ChunkResult, policy: Policy) -> bool:
    """Whether a chunk has enough rows to be judged at all."""
    return chunk.rows >= policy.min_rows


def realized_judged(chunk: ChunkResult, policy: Policy) -> bool:
    """Whether a chunk has enough labels of both classes to judge its realized performance."""
    negatives = chunk.labelled - chunk.labelled_positives
    return (
        judged(chunk, policy)
        and chunk.labelled >= policy.min_labelled
        and min(chunk.labelled_positives, negatives) >= policy.min_labelled_positives
    )


def drifting(chunk: ChunkResult, policy: Policy) -> bool:
    """Whether a chunk shows drift (multivariate, or enough univariate features)."""
    return chunk.multivariate_drift or len(chunk.drifted_features) >= policy.drift_min_features


def _streak(
    chunks: Sequence[ChunkResult],
    first_new: int,
    value_of: Callable[[ChunkResult], float | None],
    breached: Callable[[float], bool],
    needed: int,
) -> list[tuple[ChunkResult, float]] | None:
    """The latest run of ``needed`` consecutive breaches ending in a new chunk, else None.

    ``value_of`` returns None for a chunk that cannot be judged: it is skipped, neither breaking
    nor extending a streak.
    """
    run: list[tuple[ChunkResult, float]] = []
    found: list[tuple[ChunkResult, float]] | None = None
    for position, chunk in enumerate(chunks):
        value = value_of(chunk)
        if value is None:
            continue
        run = [*run, (chunk, value)] if breached(value) else []
        if len(run) >= needed and position >= first_new:
            found = run[-needed:]
    return found


def _estimated_value(chunk: ChunkResult, metric: str, policy: Policy) -> float | None:
    estimate = chunk.estimated.get(metric)
    return estimate.value if estimate is not None and judged(chunk, policy) else None


def _realized_value(chunk: ChunkResult, metric: str, policy: Policy) -> float | None:
    return chunk.realized.get(metric) if realized_judged(chunk, policy) else None


def _below(value: float, threshold: float) -> bool:
    return value < threshold


def _window(run: Sequence[tuple[ChunkResult, float]]) -> tuple[datetime | None, datetime | None]:
    return run[0][0].start, run[-1][0].end


def _insufficient(results: Results, policy: Policy) -> list[Alert]:
    """``insufficient data`` for a window too small to chunk, and for chunks too thin to judge."""
    version = results.model_version
    alerts: list[Alert] = []
    if not results.chunks and results.window_rows < policy.min_rows:
        alerts.append(
            Alert(
                AlertKind.INSUFFICIENT_DATA,
                version,
                metric="rows",
                value=float(results.window_rows),
                threshold=float(policy.min_rows),
                window_start=results.window_start,
                window_end=results.window_end,
                source="window",
            )
        )
    thin = [chunk for chunk in results.chunks if not judged(chunk, policy)]
    if thin:
        alerts.append(
            Alert(
                AlertKind.INSUFFICIENT_DATA,
                version,
                metric="rows",
                value=float(min(chunk.rows for chunk in thin)),
                threshold=float(policy.min_rows),
                window_start=thin[0].start,
                window_end=thin[-1].end,
                source="chunk",
                chunks=len(thin),
            )
        )
    return alerts


def _degraded(results: Results, policy: Policy) -> list[Alert]:
    """``degraded`` per metric and source (estimated, realized) below threshold for long enough."""
    chunks = [*results.history, *results.chunks]
    first_new = len(results.history)
    relabelled = first_new if results.relabelled_from is None else min(results.relabelled_from, first_new)
    alerts: list[Alert] = []
    for metric, threshold in policy.thresholds.items():
        sources: dict[str, tuple[Callable[[ChunkResult], float | None], int]] = {
            "estimated": (partial(_estimated_value, metric=metric, policy=policy), first_new),
            "realized": (partial(_realized_value, metric=metric, policy=policy), relabelled),
        }
        for source, (value_of, news_from) in sources.items():
            below = partial(_below, threshold=threshold)
            run = _streak(chunks, news_from, value_of, below, policy.consecutive_chunks)
            if run is None:
                continue
            start, end = _window(run)
            alerts.append(
                Alert(
                    AlertKind.DEGRADED,
                    results.model_version,
                    metric=metric,
                    value=run[-1][1],
                    threshold=threshold,
                    window_start=start,
                    window_end=end,
                    source=source,
                    chunks=len(run),
                )
            )
    return alerts


def _drifted(results: Results, policy: Policy) -> list[Alert]:
    """``drifted`` when enough consecutive new chunks drift (univariate or multivariate)."""

    def drift_score(chunk: ChunkResult) -> float | None:
        if not judged(chunk, policy):
            return None
        return 1.0 if drifting(chunk, policy) else 0.0

    chunks = [*results.history, *results.chunks]
    run = _streak(chunks, len(results.history), drift_score, lambda v: v > 0, policy.consecutive_chunks)
    if run is None:
        return []
    last = run[-1][0]
    start, end = _window(run)
    features = sorted({name for chunk, _ in run for name in chunk.drifted_features})
    multivariate = last.multivariate_drift
    return [
        Alert(
            AlertKind.DRIFTED,
            results.model_version,
            metric="reconstruction_error" if multivariate else "drifted_features",
            value=last.reconstruction_error if multivariate else float(len(last.drifted_features)),
            threshold=last.reconstruction_threshold if multivariate else float(policy.drift_min_features),
            window_start=start,
            window_end=end,
            source="drift",
            chunks=len(run),
            details={"features": features},
        )
    ]


def evaluate(results: Results, policy: Policy) -> list[Alert]:
    """Decide the alerts of one run (see the module docstring)."""
    alerts = _insufficient(results, policy)
    if not results.chunks and results.relabelled_from is None:
        return alerts
    alerts += _degraded(results, policy)
    if any(alert.kind is AlertKind.DEGRADED for alert in alerts):
        return alerts  # a drift is only a warning when performance did not drop
    return alerts + _drifted(results, policy)


# --- a version's state across runs: degraded until a run shows it recovered -----------------------------


class Status(enum.StrEnum):
    """What monitoring last concluded about a version."""

    OK = "ok"
    DEGRADED = "degraded"


class RetrainAction(enum.StrEnum):
    """What a run asks of the retrain trigger."""

    REQUESTED = "requested"  # a `degraded` event that starts the version's retrain
    SUPPRESSED = "suppressed"  # the version's retrain was requested within the debounce window
    NONE = "none"  # nothing new to act on


@dataclass(frozen=True)
class VersionState:
    """A version's monitoring state, kept between runs (``monitoring.store``)."""

    model_version: str
    status: Status = Status.OK
    since: datetime | None = None  # when it became degraded
    reason: str = ""  # the alert that made it so, in words
    retrain_requested_at: datetime | None = None  # the last `degraded` event that requested a retrain
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Retrain:
    """This run's word on the version's retrain: requested, or suppressed and until when."""

    action: RetrainAction
    reason: str
    allowed_after: datetime | None = None

    def payload(self) -> dict[str, Any]:
        """JSON-ready: what the notification says about the retrain."""
        return {
            "action": str(self.action),
            "reason": self.reason,
            "allowed_after": self.allowed_after.isoformat() if self.allowed_after else None,
        }


def describe(alert: Alert) -> str:
    """An alert in words, e.g. ``realized roc_auc 0.480 < 0.800 over 2 chunk(s)``."""
    value = "-" if alert.value is None else f"{alert.value:.3f}"
    threshold = "-" if alert.threshold is None else f"{alert.threshold:.3f}"
    return f"{alert.source} {alert.metric} {value} < {threshold} over {alert.chunks} chunk(s)"


def advance(
    previous: VersionState | None,
    model_version: str,
    alerts: Sequence[Alert],
    judged_chunks: int,
    now: datetime,
    debounce_s: float,
) -> tuple[VersionState, Retrain]:
    """The version's state after a run, and what the run asks of its retrain.

    - A ``degraded`` alert makes (or keeps) the version degraded. Its retrain is requested unless one was
      requested for this version less than ``debounce_s`` ago: then it is suppressed, saying until when
      (the retrain automation debounces each version over the same window).
    - A run that judged new chunks without a ``degraded`` alert shows the version recovered.
    - A run with nothing new to judge changes nothing: a degraded version stays degraded.

    Args:
        previous: The stored state (None: never monitored).
        model_version: The version monitored.
        alerts: This run's alerts.
        judged_chunks: New chunks this run judged (enough rows each).
        now: The run's time.
        debounce_s: One retrain request per version within this window (``prefect.debounce_s``).
    """
    state = previous or VersionState(model_version)
    degraded = [alert for alert in alerts if alert.kind is AlertKind.DEGRADED]
    if not degraded:
        if judged_chunks > 0 and state.status is Status.DEGRADED:
            state = replace(state, status=Status.OK, since=None, reason=f"recovered at {now.isoformat()}")
        return replace(state, updated_at=now), Retrain(RetrainAction.NONE, "not degraded in this run")
    since = state.since if state.status is Status.DEGRADED and state.since is not None else now
    reason = "; ".join(describe(alert) for alert in degraded)
    last = state.retrain_requested_at
    window = timedelta(seconds=debounce_s)
    if last is not None and now - last < window:
        allowed = last + window
        retrain = Retrain(
            RetrainAction.SUPPRESSED,
            f"version {model_version}'s retrain was requested at {last.isoformat(timespec='seconds')}: one "
            f"per version every {debounce_s:.0f} s (PREFECT__DEBOUNCE_S); a `degraded` of this version "
            f"requests the next one from {allowed.isoformat(timespec='seconds')}",
            allowed,
        )
    else:
        first = "the first for this version" if last is None else "the window since the last one has passed"
        retrain = Retrain(RetrainAction.REQUESTED, f"retrain requested ({first})", now + window)
        last = now
    state = replace(
        state,
        status=Status.DEGRADED,
        since=since,
        reason=reason,
        retrain_requested_at=last,
        updated_at=now,
    )
    return state, retrain


def state_line(state: VersionState, debounce_s: float) -> str:
    """A version's state in one line (status, the monitor's report)."""
    if state.status is not Status.DEGRADED:
        return f"version {state.model_version}: ok" + (f" ({state.reason})" if state.reason else "")
    since = state.since.isoformat(timespec="seconds") if state.since else "?"
    line = f"version {state.model_version}: DEGRADED since {since} ({state.reason})"
    if state.retrain_requested_at is not None:
        requested = state.retrain_requested_at
        allowed = requested + timedelta(seconds=debounce_s)
        line += (
            f"; retrain requested at {requested.isoformat(timespec='seconds')}, "
            f"the next allowed from {allowed.isoformat(timespec='seconds')}"
        )
    return line
