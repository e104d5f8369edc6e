"""Retention: old log rows move to partitioned Parquet and leave the live log, and readers still see them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from shadow_support import logged_shadow_answers
from sqlalchemy import Engine, func, select

from adapters import log_archive, log_window, prediction_log
from adapters.log_archive import PREDICTIONS, SHADOW, STAGING
from adapters.prediction_log import (
    ROUTE,
    ROUTE_CANARY,
    ROUTE_CHAMPION,
    SHADOW_ANSWERS,
    archive_parts,
    feedback,
    predictions,
    shadow_batch,
    shadow_batches,
)
from adapters.traffic import read_labelled_traffic
from reggaeton.ids import time_ordered_ids
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY, TARGET
from reggaeton.settings import Settings

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
KEEP_DAYS = 3.0
CUTOFF = log_archive.retention_cutoff(NOW, KEEP_DAYS)  # 2026-06-12 12:00


def _fill(engine: Engine, rows: int = 600, days: float = 6.0, seed: int = 0) -> None:
    """Predictions spread evenly over ``days`` before NOW (a tenth from a canary), 30 % labelled, and a
    shadow answer for every other one, four answers to a shadow batch."""
    rng = np.random.default_rng(seed)
    start = NOW - timedelta(days=days)
    step = timedelta(days=days) / rows
    records: list[dict[str, object]] = []
    labels: list[dict[str, object]] = []
    shadows: list[dict[str, object]] = []
    answers: list[tuple[str, float, int]] = []
    for i in range(rows):
        at = start + i * step
        (pid,) = time_ordered_ids(1, int(at.timestamp() * 1000))
        proba = float(rng.random())
        records.append(
            {
                "id": pid,
                "created_at": at,
                "model_name": "reggaeton-classifier",
                "model_version": "2" if i % 50 == 0 else "1",
                **{name: float(rng.random()) for name in FEATURE_NAMES},
                PROBABILITY: proba,
                PREDICTION: int(proba > 0.5),
                ROUTE: ROUTE_CANARY if i % 10 == 3 else ROUTE_CHAMPION,
            }
        )
        if rng.random() < 0.3:
            labels.append({"prediction_id": pid, "label": int(rng.random() < 0.2), "received_at": at + step})
        if i % 2 == 0:
            answers.append((pid, proba / 2, 0))
        if len(answers) == 4 or (answers and i == rows - 1):  # the batch's time: its newest request's
            shadows.append(shadow_batch("3", "reggaeton-classifier", at, answers))
            answers = []
    with engine.begin() as connection:
        connection.execute(predictions.insert(), records)
        connection.execute(feedback.insert(), labels)
        connection.execute(shadow_batches.insert(), shadows)


def _shadow_answers(engine: Engine) -> list[tuple[str, float, int]]:
    """The live shadow answers, one per row, sorted."""
    columns = (prediction_log.FEEDBACK_PREDICTION_ID, PROBABILITY, PREDICTION)
    return sorted(tuple(row[c] for c in columns) for row in logged_shadow_answers(engine))  # type: ignore[misc]


def _count(engine: Engine, table: object, older: bool = False) -> int:
    query = select(func.count()).select_from(table)  # type: ignore[arg-type]
    if older:
        query = query.where(table.c.created_at < CUTOFF)  # type: ignore[attr-defined]
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


@pytest.fixture
def log(settings: Settings) -> Engine:
    settings.ensure_state_dir()
    engine = prediction_log.make_engine(settings.prediction_log_url)
    prediction_log.create_tables(engine)
    _fill(engine)
    return engine


def _archive_all(engine: Engine, folder: Path, part_rows: int = 1_000_000) -> list[log_archive.Moved]:
    log_archive.recover(engine, folder)
    return [
        log_archive.archive_source(engine, folder, source, CUTOFF, part_rows)
        for source in (PREDICTIONS, SHADOW)
    ]


def _archived_ids(folder: Path, source: log_archive.Source) -> list[str]:
    files = sorted((folder / source.name).glob("date=*/part-*.parquet"))
    return [pid for path in files for pid in pq.read_table(path).column(source.key).to_pylist()]


def test_rows_older_than_the_setting_move_to_daily_parquet_and_leave_the_live_log(
    log: Engine, settings: Settings
) -> None:
    folder = settings.archive_path
    before = {table.name: _count(log, table) for table in (predictions, feedback, shadow_batches)}
    older = {table.name: _count(log, table, older=True) for table in (predictions, shadow_batches)}
    answers_before = _shadow_answers(log)
    window_before = log_window.read_window(log, "1")
    traffic_before = read_labelled_traffic(settings)

    moved = {m.source: m for m in _archive_all(log, folder, part_rows=80)}

    for table in (predictions, shadow_batches):
        m = moved[table.name]
        assert m.archived == older[table.name] > 0
        assert m.archived + m.kept == before[table.name] == m.before  # archived + kept == before
        assert _count(log, table, older=True) == 0 and m.left_older == 0
    # Labels left with their predictions: only labels of live predictions stay live.
    with log.connect() as connection:
        live_ids = set(connection.execute(select(predictions.c.id)).scalars())
        live_labels = set(connection.execute(select(feedback.c.prediction_id)).scalars())
        parts = connection.execute(select(archive_parts)).mappings().all()
    assert live_labels <= live_ids and len(live_labels) < before["feedback"]
    # One folder per day, files of at most part_rows rows, each listed and done.
    days = sorted(path.name for path in (folder / "predictions").iterdir())
    assert days == ["date=2026-06-09", "date=2026-06-10", "date=2026-06-11", "date=2026-06-12"]
    assert all(row["deleted_at"] is not None and row["rows"] <= 80 for row in parts)
    assert sum(row["rows"] for row in parts if row["source"] == "predictions") == older["predictions"]
    archived = _archived_ids(folder, PREDICTIONS)
    assert len(archived) == len(set(archived)) == older["predictions"] and not set(archived) & live_ids
    # Shadow batches moved whole: their answers, archived or live, are every answer once, bit for bit.
    shadow_files = sorted((folder / SHADOW.name).glob("date=*/part-*.parquet"))
    archived_answers = [
        (pid, proba, label)
        for path in shadow_files
        for document in pq.read_table(path).column(SHADOW_ANSWERS).to_pylist()
        for pid, proba, label in json.loads(document)
    ]
    assert sorted(archived_answers + _shadow_answers(log)) == answers_before
    assert {pid for pid, _, _ in archived_answers} <= set(archived)  # older requests' answers
    assert not list((folder / STAGING).iterdir())
    # /feedback's view: predictions before the cutoff were archived.
    with log.connect() as connection:
        assert prediction_log.archived_before(connection) == CUTOFF

    # Readers that need the old rows still see them, from the archive, exactly as before.
    window_after = log_window.read_window(log, "1", archive=folder)
    pd.testing.assert_frame_equal(window_after, window_before, check_dtype=False)
    assert log_window.read_window(log, "1")["created_at"].min() >= CUTOFF  # the live log alone: new rows
    later = (window_before["created_at"].iloc[99].to_pydatetime(), window_before["id"].iloc[99])
    pd.testing.assert_frame_equal(
        log_window.read_window(log, "1", after=later, archive=folder),
        window_before.iloc[100:].reset_index(drop=True),
        check_dtype=False,
    )
    traffic_after = read_labelled_traffic(settings)
    assert traffic_after["id"].tolist() == traffic_before["id"].tolist()
    assert traffic_after[TARGET].tolist() == traffic_before[TARGET].tolist()
    np.testing.assert_array_equal(traffic_after[list(FEATURE_NAMES)], traffic_before[list(FEATURE_NAMES)])
    log.dispose()


def test_files_of_the_retired_shadow_table_are_forgotten_if_unfinished_and_never_restored(
    log: Engine, tmp_path: Path
) -> None:
    """Revision 0004 moved ``shadow_predictions``' live rows to ``shadow_batches``: a file of the old table
    a crash left unfinished holds rows that are still live (moved), so it goes; a finished one stays."""
    folder = tmp_path / "archive"
    (retired,) = log_archive.RETIRED_SOURCES
    day = f"{retired}/date=2026-06-01"
    (folder / day).mkdir(parents=True)
    parts = {name: f"{day}/part-{name}.parquet" for name in ("unfinished", "done")}
    for part in parts.values():
        (folder / part).write_bytes(b"PAR1")
    with log.begin() as connection:
        for name, part in parts.items():
            connection.execute(
                archive_parts.insert().values(
                    part=part,
                    source=retired,
                    rows=1,
                    first_created_at=NOW,
                    last_created_at=NOW,
                    cutoff=NOW,
                    written_at=NOW,
                    deleted_at=NOW if name == "done" else None,
                )
            )
    before = _count(log, shadow_batches)

    assert log_archive.recover(log, folder) == 0
    with log.connect() as connection:
        assert connection.execute(select(archive_parts.c.part)).scalars().all() == [parts["done"]]
    assert not (folder / parts["unfinished"]).exists() and (folder / parts["done"]).exists()
    assert _count(log, shadow_batches) == before
    with pytest.raises(log_archive.ArchiveError, match="no longer has"):
        log_archive.restore(log, folder, parts["done"])
    log.dispose()


def test_an_archive_write_that_fails_deletes_nothing(log: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "predictions").write_text("a file where the day folders should go")
    before = _count(log, predictions)
    with pytest.raises(OSError):
        log_archive.archive_source(log, folder, PREDICTIONS, CUTOFF, 1_000_000)
    assert _count(log, predictions) == before
    with log.connect() as connection:
        pending = connection.execute(select(archive_parts.c.deleted_at)).scalars().all()
        assert prediction_log.archived_before(connection) is None
    assert pending == [None]  # listed, never placed: the next run forgets it and starts again
    (folder / "predictions").unlink()
    moved = log_archive.archive_source(log, folder, PREDICTIONS, CUTOFF, 1_000_000)
    log_archive.recover(log, folder)
    assert _count(log, archive_parts) == 4 and moved.archived + moved.kept == before
    log.dispose()


def test_a_rerun_after_a_crash_between_write_and_delete_neither_doubles_nor_loses_rows(
    log: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"
    (folder / STAGING).mkdir(parents=True)
    before, older = _count(log, predictions), _count(log, predictions, older=True)
    # A run that died after placing its first file, before deleting its rows ...
    day = (CUTOFF - timedelta(days=3)).date()
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with log.connect() as reader:
        staged = next(
            log_archive._write_staged(
                reader, PREDICTIONS, (start, start + timedelta(days=1)), folder / STAGING, 30
            )
        )
    log_archive._place(log, folder, PREDICTIONS, staged, day, CUTOFF)
    # ... and one that died with a second file written but not yet placed.
    with log.connect() as reader:
        unplaced = next(
            log_archive._write_staged(
                reader, PREDICTIONS, (start + timedelta(days=1), CUTOFF), folder / STAGING, 30
            )
        )
    with log.begin() as connection:
        connection.execute(
            archive_parts.insert().values(
                part=f"predictions/date={day}/part-unplaced.parquet",
                source="predictions",
                rows=len(unplaced.keys),
                first_created_at=unplaced.first_at,
                last_created_at=unplaced.last_at,
                cutoff=CUTOFF,
                written_at=NOW,
            )
        )
    assert _count(log, predictions) == before  # nothing deleted yet: the placed file's rows are live too

    assert log_archive.recover(log, folder) == 1
    moved = log_archive.archive_source(log, folder, PREDICTIONS, CUTOFF, 1_000_000)

    archived = _archived_ids(folder, PREDICTIONS)
    assert len(archived) == len(set(archived)) == older  # every old row once, in the archive only
    assert moved.archived + len(staged.keys) == older and moved.kept == before - older
    assert _count(log, predictions, older=True) == 0
    with log.connect() as connection:
        done = connection.execute(select(archive_parts.c.part, archive_parts.c.deleted_at)).all()
    assert all(deleted is not None for _, deleted in done) and len(done) == 1 + moved.parts
    log.dispose()


def test_the_cutoff_is_the_setting_before_now_to_the_second() -> None:
    now = datetime(2026, 6, 15, 12, 0, 7, 123456, tzinfo=UTC)
    assert log_archive.retention_cutoff(now, 1.5) == datetime(2026, 6, 14, 0, 0, 7, tzinfo=UTC)


def test_a_late_row_archived_by_a_later_run_is_read_back_in_its_place(
    log: Engine, settings: Settings
) -> None:
    folder = settings.archive_path
    _archive_all(log, folder)
    expected = log_window.read_window(log, "1", archive=folder)
    # A row answered before the cutoff reaches the log only now (its API's spool was replayed late).
    late_at = CUTOFF - timedelta(days=2, minutes=7)
    (late_id,) = time_ordered_ids(1, int(late_at.timestamp() * 1000))
    song = dict.fromkeys(FEATURE_NAMES, 0.5) | {PROBABILITY: 0.25, PREDICTION: 0}
    with log.begin() as connection:
        connection.execute(
            predictions.insert().values(
                id=late_id, created_at=late_at, model_name="m", model_version="1", **song
            )
        )
        connection.execute(feedback.insert().values(prediction_id=late_id, label=1, received_at=NOW))
    _archive_all(log, folder)  # a second file for that day, overlapping the first one's hours

    window = log_window.read_window(log, "1", archive=folder)
    assert len(window) == len(expected) + 1
    assert window["created_at"].is_monotonic_increasing
    position = int(expected["created_at"].searchsorted(pd.Timestamp(late_at)))
    assert window["id"].iloc[position] == late_id and window["label"].iloc[position] == 1.0
    pd.testing.assert_frame_equal(
        window.drop(index=position).reset_index(drop=True), expected, check_dtype=False
    )
    log.dispose()


def test_a_restored_day_is_live_again_and_read_once(
    log: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.retention import main

    folder = settings.archive_path
    before = log_window.read_window(log, "1")
    labelled_before = _count(log, feedback)
    _archive_all(log, folder, part_rows=80)
    day = (CUTOFF - timedelta(days=2)).date()
    parts = log_archive.parts_of_day(log, day)
    assert {part.split("/")[0] for part in parts} == {"predictions", "shadow_batches"}

    monkeypatch.setenv("REGGAETON_STATE_DIR", str(settings.state_dir))
    assert main(["restore", "--day", day.isoformat()]) == 0
    assert f"from predictions/date={day}/" in capsys.readouterr().out

    live = log_window.read_window(log, "1")  # the live log alone
    assert set(live["created_at"].dt.date) == {day} | {
        d for d in set(before["created_at"].dt.date) if d >= CUTOFF.date()
    }
    restored = before[before["created_at"].dt.date == day]
    pd.testing.assert_frame_equal(
        live[live["created_at"].dt.date == day].reset_index(drop=True),
        restored.reset_index(drop=True),
        check_dtype=False,
    )
    # With the archive, every row once: the restored files left the manifest and the folder.
    pd.testing.assert_frame_equal(log_window.read_window(log, "1", archive=folder), before, check_dtype=False)
    assert log_archive.parts_of_day(log, day) == [] and not list(folder.glob(f"*/date={day}/*.parquet"))
    assert list((folder / log_archive.RESTORED).glob(f"*/date={day}/*.parquet"))
    with pytest.raises(log_archive.ArchiveError, match="not an archived file"):
        log_archive.restore(log, folder, parts[0])
    assert _count(log, feedback) < labelled_before  # other days' labels are still archived
    log.dispose()
