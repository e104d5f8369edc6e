"""The alert policy is a pure function of chunk results: every rule on hand-built chunks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitoring.estimation import ChunkResult, Estimate
from monitoring.policy import (
    AlertKind,
    Policy,
    Results,
    RetrainAction,
    Status,
    advance,
    evaluate,
    state_line,
)

POLICY = Policy(
    thresholds={"roc_auc": 0.8}, consecutive_chunks=2, min_rows=200, min_labelled=50, drift_min_features=2
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def chunk(
    index: int,
    estimated: float = 0.95,
    *,
    rows: int = 500,
    realized: float | None = None,
    labelled: int = 0,
    positives: int = 0,
    drifted: tuple[str, ...] = (),
    multivariate: bool = False,
) -> ChunkResult:
    return ChunkResult(
        index=index,
        start=T0 + timedelta(hours=index),
        end=T0 + timedelta(hours=index, minutes=59),
        rows=rows,
        labelled=labelled,
        labelled_positives=positives,
        estimated={"roc_auc": Estimate(estimated, estimated - 0.05, min(1.0, estimated + 0.05))},
        realized={} if realized is None else {"roc_auc": realized},
        drifted_features=drifted,
        reconstruction_error=1.5 if multivariate else 1.2,
        reconstruction_threshold=1.4,
        multivariate_drift=multivariate,
    )


def kinds(alerts: list) -> list[AlertKind]:
    return [alert.kind for alert in alerts]


def test_healthy_chunks_raise_nothing() -> None:
    assert evaluate(Results("1", [chunk(i) for i in range(10)]), POLICY) == []


def test_one_low_chunk_is_not_enough_two_in_a_row_are() -> None:
    assert evaluate(Results("1", [chunk(0, 0.7), chunk(1), chunk(2, 0.7)]), POLICY) == []
    alerts = evaluate(Results("1", [chunk(0), chunk(1, 0.75), chunk(2, 0.7)]), POLICY)
    assert kinds(alerts) == [AlertKind.DEGRADED]
    alert = alerts[0]
    assert (alert.metric, alert.source, alert.value, alert.threshold) == ("roc_auc", "estimated", 0.7, 0.8)
    assert alert.window_start == chunk(1).start and alert.window_end == chunk(2).end
    payload = alert.payload()
    assert payload["model_version"] == "1" and payload["window"]["chunks"] == 2


def test_streak_continues_from_history_but_only_new_chunks_fire() -> None:
    continued = evaluate(Results("1", [chunk(1, 0.7)], history=[chunk(0, 0.7)]), POLICY)
    assert kinds(continued) == [AlertKind.DEGRADED]
    # A streak entirely in the history was already reported by an earlier run.
    assert evaluate(Results("1", [chunk(2)], history=[chunk(0, 0.7), chunk(1, 0.7)]), POLICY) == []


def test_realized_needs_enough_labels_of_both_classes() -> None:
    few = [chunk(i, realized=0.5, labelled=40, positives=10) for i in range(3)]
    assert evaluate(Results("1", few), POLICY) == []
    one_class = [chunk(i, realized=0.5, labelled=200, positives=2) for i in range(3)]
    assert evaluate(Results("1", one_class), POLICY) == []
    enough = [chunk(i, realized=0.6, labelled=200, positives=30) for i in range(2)]
    alerts = evaluate(Results("1", enough), POLICY)
    assert [(a.kind, a.source) for a in alerts] == [(AlertKind.DEGRADED, "realized")]


def test_late_labels_on_stored_chunks_are_news_for_realized_performance_only() -> None:
    relabelled = [chunk(i, 0.7, realized=0.6, labelled=200, positives=30) for i in range(2)]
    stale = Results("1", [], history=relabelled, window_rows=0)
    assert kinds(evaluate(stale, POLICY)) == [AlertKind.INSUFFICIENT_DATA]  # already judged: not news
    fresh = evaluate(Results("1", [], history=relabelled, window_rows=0, relabelled_from=1), POLICY)
    assert [(a.kind, a.source) for a in fresh] == [
        (AlertKind.INSUFFICIENT_DATA, "window"),
        (AlertKind.DEGRADED, "realized"),  # the estimated breach was judged before: no repeat
    ]
    assert fresh[1].window_start == relabelled[0].start and fresh[1].chunks == 2


def test_small_window_is_insufficient_data_never_an_alarm() -> None:
    alerts = evaluate(Results("1", [], window_rows=120), POLICY)
    assert kinds(alerts) == [AlertKind.INSUFFICIENT_DATA]
    assert (alerts[0].value, alerts[0].threshold) == (120.0, 200.0)
    # Thin chunks (period chunking) with terrible numbers are reported as thin, not as degraded.
    thin = [chunk(i, 0.3, rows=50, drifted=("tempo", "energy")) for i in range(4)]
    assert kinds(evaluate(Results("1", thin), POLICY)) == [AlertKind.INSUFFICIENT_DATA]


def test_thin_chunks_neither_break_nor_extend_a_streak() -> None:
    chunks = [chunk(0, 0.7), chunk(1, 0.99, rows=10), chunk(2, 0.7)]
    assert AlertKind.DEGRADED in kinds(evaluate(Results("1", chunks), POLICY))


def test_drift_without_performance_drop_is_drifted() -> None:
    chunks = [chunk(0, drifted=("tempo", "energy")), chunk(1, multivariate=True)]
    alerts = evaluate(Results("1", chunks), POLICY)
    assert kinds(alerts) == [AlertKind.DRIFTED]
    assert alerts[0].metric == "reconstruction_error" and alerts[0].value == 1.5
    assert alerts[0].details["features"] == ["energy", "tempo"]
    # One drifting feature is below drift_min_features.
    assert evaluate(Results("1", [chunk(i, drifted=("tempo",)) for i in range(3)]), POLICY) == []


def test_drift_with_performance_drop_is_degraded_only() -> None:
    chunks = [chunk(i, 0.6, multivariate=True) for i in range(2)]
    assert kinds(evaluate(Results("1", chunks), POLICY)) == [AlertKind.DEGRADED]


# --- a version's state across runs -------------------------------------------------------------------
WINDOW_S = 600.0


def _degraded_alerts(version: str = "2") -> list:
    return evaluate(Results(version, [chunk(0, 0.7), chunk(1, 0.6)]), POLICY)


def test_a_version_stays_degraded_until_a_run_shows_it_recovered() -> None:
    state, retrain = advance(None, "2", _degraded_alerts(), 2, T0, WINDOW_S)
    assert state.status is Status.DEGRADED and state.since == T0
    assert retrain.action is RetrainAction.REQUESTED and state.retrain_requested_at == T0
    assert retrain.reason == "retrain requested (the first for this version)"

    # A run with nothing new to judge (quiet traffic) leaves it degraded, and asks for nothing.
    quiet, retrain = advance(state, "2", [], 0, T0 + timedelta(minutes=5), WINDOW_S)
    assert quiet.status is Status.DEGRADED and quiet.since == T0
    assert retrain.action is RetrainAction.NONE

    # Judged chunks without a degraded alert: recovered.
    healthy = evaluate(Results("2", [chunk(2), chunk(3)]), POLICY)
    recovered, _ = advance(quiet, "2", healthy, 2, T0 + timedelta(minutes=10), WINDOW_S)
    assert recovered.status is Status.OK and recovered.since is None
    assert "recovered at" in state_line(recovered, WINDOW_S)


def test_one_retrain_request_per_version_per_window_the_rest_say_until_when() -> None:
    first, _ = advance(None, "2", _degraded_alerts(), 2, T0, WINDOW_S)
    again, retrain = advance(first, "2", _degraded_alerts(), 2, T0 + timedelta(minutes=5), WINDOW_S)
    assert retrain.action is RetrainAction.SUPPRESSED
    assert retrain.allowed_after == T0 + timedelta(seconds=WINDOW_S)
    assert "requested at 2026-01-01T00:00:00+00:00" in retrain.reason
    assert "requests the next one from 2026-01-01T00:10:00+00:00" in retrain.reason
    assert again.since == T0 and again.retrain_requested_at == T0  # the window is not pushed on
    later, retrain = advance(again, "2", _degraded_alerts(), 2, T0 + timedelta(seconds=WINDOW_S), WINDOW_S)
    assert retrain.action is RetrainAction.REQUESTED
    assert retrain.reason == "retrain requested (the window since the last one has passed)"
    assert later.retrain_requested_at == T0 + timedelta(seconds=WINDOW_S)
    # A new champion has a state of its own: its first degraded requests its retrain at once.
    _, new = advance(None, "3", _degraded_alerts("3"), 2, T0 + timedelta(minutes=1), WINDOW_S)
    assert new.action is RetrainAction.REQUESTED
