"""The results store on a real SQLite file: an older store is brought up to date in place."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from monitoring import store
from monitoring.estimation import ChunkResult
from monitoring.policy import Status, VersionState


def test_a_store_from_before_the_chunk_ids_gains_them_and_keeps_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    old = create_engine(url)
    store.metadata.create_all(old)
    with old.begin() as connection:  # the table as the first release created it
        connection.execute(text("ALTER TABLE monitoring_chunks DROP COLUMN first_id"))
        connection.execute(text("ALTER TABLE monitoring_chunks DROP COLUMN last_id"))
        connection.execute(
            text(
                "INSERT INTO monitoring_chunks (run_id, chunk_index, model_version, rows, labelled, "
                "labelled_positives, multivariate_drift, drifted_features) "
                "VALUES ('r0', 0, '1', 500, 0, 0, 0, '')"
            )
        )
    old.dispose()

    engine = store.connect(url)
    columns = {column["name"] for column in inspect(engine).get_columns("monitoring_chunks")}
    assert {"first_id", "last_id"} <= columns
    now = datetime.now(UTC)
    record = store.RunRecord("r1", "m", "1", now, now, now, 500, 500, 1, 500, (now, "b"))
    store.save_run(engine, record, [ChunkResult(0, now, now, 500, first_id="a", last_id="b")])
    chunks = store.read_chunks(engine, "1")
    assert list(chunks["run_id"]) == ["r1"]  # the old row has no run record: read_chunks joins runs
    stored = store.recent_stored(engine, "1", 5)
    assert [(s.run_id, s.chunk.first_id, s.chunk.last_id) for s in stored] == [("r1", "a", "b")]
    store.connect(url)  # again: nothing to add, no error
    engine.dispose()


def test_a_version_state_round_trips_and_is_replaced(tmp_path: Path) -> None:
    engine = store.connect(f"sqlite:///{tmp_path / 'monitoring.db'}")
    at = datetime(2026, 12, 6, 12, 7, tzinfo=UTC)
    assert store.read_state(engine, "m", "2") is None
    degraded = VersionState("2", Status.DEGRADED, at, "realized roc_auc 0.480 < 0.800", at, at)
    store.save_state(engine, "m", degraded)
    assert store.read_state(engine, "m", "2") == degraded
    recovered = VersionState("2", Status.OK, None, "recovered", at, at)
    store.save_state(engine, "m", recovered)
    assert store.read_state(engine, "m", "2") == recovered
    assert store.read_state(engine, "other-model", "2") is None
    engine.dispose()
