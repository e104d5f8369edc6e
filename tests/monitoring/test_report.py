"""The monitoring plot rendered from a real results store: its table shows the stored chunks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitoring import report, store
from monitoring.estimation import ChunkResult, Estimate

HEADER = (
    "<tr><th>chunk_start</th><th>rows</th><th>labelled</th><th>estimated_roc_auc</th>"
    "<th>realized_roc_auc</th><th>estimated_f1</th><th>realized_f1</th><th>reconstruction_error</th>"
    "<th>drifted_features</th></tr>"
)


def _chunk(index: int, start: datetime) -> ChunkResult:
    return ChunkResult(
        index,
        start + timedelta(hours=index),
        start + timedelta(hours=index, minutes=59),
        500,
        labelled=60 * index,
        labelled_positives=index,
        estimated={"roc_auc": Estimate(0.9 - index / 100, 0.8, 0.95), "f1": Estimate(0.5, 0.4, 0.6)},
        realized={"roc_auc": 0.85, "f1": 0.4} if index else {},
        drifted_features=("energy", "tempo")[:index],
        reconstruction_error=1.1 + index / 10,
        reconstruction_threshold=1.3,
        multivariate_drift=index == 2,
    )


def test_the_report_shows_the_stored_chunks_and_renders_a_store_without_any(tmp_path: Path) -> None:
    engine = store.connect(f"sqlite:///{tmp_path / 'monitoring.db'}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    record = store.RunRecord("r1", "m", "1", start, start, start, 1500, 1500, 3, 500, None)
    store.save_run(engine, record, [_chunk(i, start) for i in range(3)])

    shown = report.render(store.read_chunks(engine, "1"), {"roc_auc": 0.8}, "m v1", tmp_path / "v1")
    page = shown.html.read_text(encoding="utf-8")
    assert shown.png.stat().st_size > 10_000 and "<svg" in page and HEADER in page
    assert (
        "<tr><td>2026-01-01 01:00:00</td><td>500</td><td>60</td><td>0.890</td><td>0.850</td>"
        "<td>0.500</td><td>0.400</td><td>1.200</td><td>energy</td></tr>"
    ) in page
    assert page.count("<tr><td>") == 3

    # The first run of a version whose window was too small to analyse has no chunks to show yet.
    empty = report.render(store.read_chunks(engine, "2"), {"roc_auc": 0.8}, "m v2", tmp_path / "v2")
    page = empty.html.read_text(encoding="utf-8")
    assert empty.png.stat().st_size > 0 and HEADER in page and "<tr><td>" not in page
    engine.dispose()
