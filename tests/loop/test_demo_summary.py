"""The demo summary: versions, the gate's figures apart from held-out ones, alerts, URLs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from embedded.demo import DRIFT_TO_SERVED, DemoReport, VersionInfo, no_retrain_reason, summary
from monitoring import store
from monitoring.policy import Status, VersionState
from reggaeton.settings import Settings

# The decision record the gate writes on a version (reggaeton.decision_detail), trimmed.
DETAIL = {
    "outcome": "promoted",
    "challenger_version": "2",
    "champion_version": "1",
    "rows": 812,
    "positives": 97,
    "challenger_metrics": {"pr_auc": 0.8812, "roc_auc": 0.9702, "brier": 0.031},
    "champion_metrics": {"pr_auc": 0.4711, "roc_auc": 0.8013, "brier": 0.074},
    "pr_auc_gain": {"estimate": 0.4101, "low": 0.3302, "high": 0.4899},
    "slices": [
        {
            "name": "base-data",
            "rule": "source == 'base'",
            "rows": 12300,
            "positives": 378,
            "min_positives": 20,
            "allowed_regression": 0.02,
            "verdict": "held",
            "champion_pr_auc": 0.726,
            "challenger_pr_auc": 0.795,
            "pr_auc_difference": {"estimate": 0.069, "low": 0.028, "high": 0.113},
            "confidence": 0.9917,
            "detail": "",
        },
        {
            "name": "acoustic",
            "rule": "acousticness >= 0.4",
            "rows": 279,
            "positives": 12,
            "min_positives": 20,
            "allowed_regression": 0.02,
            "verdict": "too small to judge",
            "champion_pr_auc": 0.3,
            "challenger_pr_auc": 0.2,
            "pr_auc_difference": None,
            "confidence": None,
            "detail": "",
        },
    ],
}


def test_summary_names_versions_decision_alerts_and_urls(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, serving={"port": 8123})
    report = DemoReport(
        started_at=datetime.now(UTC),
        before=VersionInfo("1", {"pr_auc": "0.85007", "roc_auc": "0.9612", "fp": "5.0"}),
        challenger=VersionInfo("2", {"pr_auc": "0.8180"}, "promoted", "better beyond noise", DETAIL),
        after=VersionInfo("2", {"pr_auc": "0.8180"}),
        served_before="1",
        served_after="2",
        retrain_state="Completed",
        alerts=[{"received_at": "t1", "subject": "[reggaeton] model degraded: retraining"}],
        timings={"first champion": 70.2, DRIFT_TO_SERVED: 61.4},
    )
    text = summary(settings, report)
    # Each version's own held-out figures, labelled as not comparable...
    assert (
        "champion before: version 1\n"
        "  its own held-out rows (not comparable across versions): pr_auc=0.850, roc_auc=0.961\n" in text
    )
    assert "fp=" not in text
    # ...and the gate's figures, both on the same rows, with the gain's interval.
    assert "decision on version 2: promoted (better beyond noise)" in text
    assert "both models on the same 812 evaluation rows (97 positives)" in text
    assert "champion   version 1: pr_auc=0.471, roc_auc=0.801, brier=0.074" in text
    assert "challenger version 2: pr_auc=0.881, roc_auc=0.970, brier=0.031" in text
    assert "PR-AUC gain +0.410, interval [+0.330, +0.490]" in text
    # The decision's per-slice table: every slice, both models, the difference with its interval.
    assert "  per slice (PR-AUC, challenger minus champion with its interval):\n" in text
    assert "    base-data  12300  378  0.726     0.795       +0.069 [+0.028, +0.113]  held\n" in text
    assert "    acoustic   279    12   0.300     0.200       -" + " " * 24 + "too small to judge\n" in text
    assert "API served: 1 -> 2" in text
    assert "t1  [reggaeton] model degraded: retraining" in text
    # The retrain loop's time against its target (issue 13: 60 s); other timings without one.
    assert "time, drift detected -> decision served: 61 s (target <= 60 s: MISSED)" in text
    assert "time, first champion: 70 s\n" in text
    for url in ("http://127.0.0.1:4200", "http://127.0.0.1:5000", "http://127.0.0.1:8123/docs"):
        assert url in text


def test_a_drift_the_champion_already_knows_is_said_instead_of_waited_for(tmp_path: Path) -> None:
    """A second demo on the same stack: the champion is the first demo's drift retrain, the drifted songs do
    not degrade it and nothing retrains. The demo says so (and how to start afresh) instead of timing out."""
    settings = Settings(state_dir=tmp_path / "state")
    settings.ensure_state_dir()
    began = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
    model = settings.mlflow.model_name
    engine = store.connect(settings.monitoring_results_url)
    try:
        reason = no_retrain_reason(settings, "2", began)
        assert reason is not None and "version 2) is not degraded" in reason
        assert str(settings.state_path) in reason  # what to remove for a fresh demo

        degraded = VersionState(
            "2", Status.DEGRADED, since=began, retrain_requested_at=began - timedelta(hours=1)
        )
        store.save_state(engine, model, degraded)
        reason = no_retrain_reason(settings, "2", began)
        assert reason is not None and "debounce" in reason

        store.save_state(engine, model, replace(degraded, retrain_requested_at=began + timedelta(seconds=5)))
        assert no_retrain_reason(settings, "2", began) is None  # this run asked for the retrain: wait for it
    finally:
        engine.dispose()
