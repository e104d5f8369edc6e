"""`reggaeton status` and `monitor` read the last monitoring run per chunk window from the results store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cli.status import monitoring_lines
from monitoring import store
from monitoring.estimation import ChunkResult, Estimate
from monitoring.policy import Status, VersionState
from reggaeton.settings import Settings


def test_the_last_run_and_its_chunks_read_in_one_line_each(settings: Settings) -> None:
    assert monitoring_lines(settings) == ["monitoring: no run yet (`reggaeton monitor` runs one now)"]
    settings.ensure_state_dir()
    engine = store.connect(settings.monitoring_results_url)
    start = datetime(2026, 11, 30, 21, 0, tzinfo=UTC)
    chunks = [
        ChunkResult(
            0, start, start + timedelta(minutes=1), 500, estimated={"roc_auc": Estimate(0.91, 0.88, 0.94)}
        ),
        ChunkResult(
            1,
            start + timedelta(minutes=1),
            start + timedelta(minutes=2),
            500,
            labelled=150,
            estimated={"roc_auc": Estimate(0.9, 0.87, 0.93)},
            realized={"roc_auc": 0.7123},
            drifted_features=("tempo", "energy"),
        ),
    ]
    end = start + timedelta(minutes=2)
    record = store.RunRecord("r1", "m", "3", end, start, end, 1000, 1000, 2, 500, (end, "b"), "degraded")
    store.save_run(engine, record, chunks)
    degraded = VersionState(
        "3", Status.DEGRADED, end, "realized roc_auc 0.712 < 0.800 over 2 chunk(s)", end, end
    )
    store.save_state(engine, "m", degraded)
    engine.dispose()

    lines = monitoring_lines(settings)
    assert lines[0] == (
        "monitoring: last run 2026-11-30 21:02:00 on version 3: 1000 rows read, 2 chunk(s), alerts: degraded"
    )
    # The version stays degraded until a run shows it recovered; when its next retrain is allowed.
    assert lines[1] == (
        "  state: version 3: DEGRADED since 2026-11-30T21:02:00+00:00 (realized roc_auc 0.712 < 0.800 over "
        "2 chunk(s)); retrain requested at 2026-11-30T21:02:00+00:00, the next allowed from "
        "2026-11-30T21:12:00+00:00"
    )
    assert lines[2] == (
        "  chunk 2026-11-30 21:00:00 .. 2026-11-30 21:01:00: 500 rows, estimated ROC-AUC 0.910, "
        "realized - (0 labelled), drifted: none"
    )
    assert lines[3].endswith("estimated ROC-AUC 0.900, realized 0.712 (150 labelled), drifted: tempo,energy")


def test_the_champion_decision_is_verified_or_flagged(settings: Settings) -> None:
    from adapters import decisions, keys, registry
    from cli.status import decision_line
    from reggaeton import decision_record, names

    client = registry.connect(settings)
    client.create_registered_model(names.MODEL_NAME)
    for _ in range(2):
        client.create_model_version(names.MODEL_NAME, source=(settings.state_path / "none").as_uri())
    key = keys.ensure_local_keys(settings)
    decisions.sign_decision(
        client,
        key,
        model=names.MODEL_NAME,
        version="1",
        action=decision_record.GATE,
        outcome=decision_record.PROMOTED,
        previous_champion=None,
        evaluation="ab",
        evidence=decision_record.evidence_of({}, "better"),
        policy={},
        decided_by="gate",
        decided_at="2026-12-06T12:00:00+00:00",
    )
    client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, "1")
    champion = client.get_model_version_by_alias(names.MODEL_NAME, names.CHAMPION)
    assert decision_line(settings, champion) == (
        "champion decision: #1 gate by gate at 2026-12-06T12:00:00+00:00, "
        f"signature verified (key {key.key_id})"
    )
    client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, "2")
    moved = decision_line(settings, client.get_model_version_by_alias(names.MODEL_NAME, names.CHAMPION))
    assert moved.startswith("champion decision: NOT AUTHORIZED: version 2 has no decision record")
    assert "`reggaeton promote --version 2" in moved and "`reggaeton rollback`" in moved
