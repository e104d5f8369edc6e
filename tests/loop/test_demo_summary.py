"""The demo's summary: versions, rounded metrics, the decision, the alerts and the three URLs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from embedded.demo import DemoReport, VersionInfo, summary
from reggaeton.settings import Settings


def test_summary_names_versions_decision_alerts_and_urls(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, serving={"port": 8123})
    report = DemoReport(
        started_at=datetime.now(UTC),
        before=VersionInfo("1", {"pr_auc": "0.78407", "roc_auc": "0.9612", "fp": "5.0"}),
        challenger=VersionInfo("2", {"pr_auc": "0.9207"}, "promoted", "better beyond noise"),
        after=VersionInfo("2", {"pr_auc": "0.9207"}),
        served_before="1",
        served_after="2",
        retrain_state="Completed",
        alerts=[{"received_at": "t1", "subject": "[reggaeton] model degraded: retraining"}],
    )
    text = summary(settings, report)
    assert "champion before: version 1 (pr_auc=0.784, roc_auc=0.961)" in text
    assert "fp=" not in text
    assert "decision: promoted (better beyond noise)" in text
    assert "API served: 1 -> 2" in text
    assert "t1  [reggaeton] model degraded: retraining" in text
    for url in ("http://127.0.0.1:4200", "http://127.0.0.1:5000", "http://127.0.0.1:8123/docs"):
        assert url in text
