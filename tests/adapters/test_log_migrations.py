"""The prediction log's migrations: any log, a v1 one with rows included, ends at today's schema."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from shadow_support import logged_shadow_answers
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from adapters import log_migrations, log_window, prediction_log
from adapters.prediction_log import (
    CREATED_AT,
    FEEDBACK_PREDICTION_ID,
    MODEL_NAME,
    MODEL_VERSION,
    ROUTE,
    ROUTE_CANARY,
    ROUTE_CHAMPION,
    SCHEMA_REVISION,
    create_tables,
    feedback,
    make_engine,
    predictions,
)
from reggaeton.schema import PREDICTION, PROBABILITY

# The v1 log exactly as `metadata.create_all` made it before migrations (adapters/prediction_log.py at
# 451b51c): defined here, not imported, since the module now describes v2.
V1_FEATURES = ("danceability", "energy", "speechiness", "acousticness", "valence", "tempo", "loudness")
v1 = MetaData()
v1_predictions = Table(
    "predictions",
    v1,
    Column("id", String(36), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(50), nullable=False),
    *(Column(name, Float, nullable=False) for name in V1_FEATURES),
    Column("probability", Float, nullable=False),
    Column("prediction", Integer, nullable=False),
    Index("ix_predictions_version_created", "model_version", "created_at"),
)
v1_feedback = Table(
    "feedback",
    v1,
    Column("prediction_id", String(36), ForeignKey("predictions.id"), primary_key=True),
    Column("label", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
START = datetime(2026, 3, 1, tzinfo=UTC)


def _v1_log_with_rows(engine: Engine, rows: int = 50) -> None:
    v1.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(v1_predictions),
            [
                {
                    "id": f"p{i:03d}",
                    "created_at": START + timedelta(seconds=i),
                    "model_name": "reggaeton-classifier",
                    "model_version": "3",
                    **dict.fromkeys(V1_FEATURES, 0.01 * i),
                    "probability": i / rows,
                    "prediction": int(i % 3 == 0),
                }
                for i in range(rows)
            ],
        )
        connection.execute(
            insert(v1_feedback),
            [{"prediction_id": f"p{i:03d}", "label": i % 2, "received_at": START} for i in range(0, rows, 5)],
        )


# The shadow answers table of revisions 0002-0003, a row per answer (0004 moved them to shadow_batches).
v3 = MetaData()
v3_shadow_predictions = Table(
    "shadow_predictions",
    v3,
    Column("prediction_id", String(36), primary_key=True),
    Column("model_version", String(50), primary_key=True),
    Column("model_name", String(200), nullable=False),
    Column("probability", Float, nullable=False),
    Column("prediction", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def _v3_log_with_shadow_answers(engine: Engine) -> list[tuple[object, ...]]:
    """A log at revision 0003 holding shadow answers: 3 scored batches, 2 versions; the answers, sorted."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(log_migrations.config(connection), "0003")
    answers = [
        {
            "prediction_id": f"p{i:03d}",
            "model_version": version,
            "model_name": "reggaeton-classifier",
            "probability": 1 / (i + 3),  # no short decimal form: read back bit for bit or not at all
            "prediction": i % 2,
            "created_at": START + timedelta(seconds=batch),
        }
        for batch, version, ids in ((0, "2", range(0, 5)), (1, "2", range(5, 7)), (1, "3", range(0, 4)))
        for i in ids
    ]
    with engine.begin() as connection:
        connection.execute(insert(v3_shadow_predictions), answers)
    return sorted(tuple(row.values()) for row in answers)


def _shadow_answers(engine: Engine) -> list[tuple[object, ...]]:
    """Today's shadow answers one per row, with their batch's time, sorted."""
    columns = (FEEDBACK_PREDICTION_ID, MODEL_VERSION, MODEL_NAME, PROBABILITY, PREDICTION, CREATED_AT)
    return sorted(tuple(row[c] for c in columns) for row in logged_shadow_answers(engine))


def _schema_differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate finds between the database and today's tables (types, defaults)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": log_migrations.VERSION_TABLE,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(context, prediction_log.metadata))


def _rows(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        logged = connection.execute(
            select(predictions.c.id, predictions.c.probability, predictions.c[ROUTE]).order_by(
                predictions.c.id
            )
        ).all()
        labels = connection.execute(select(feedback.c.prediction_id, feedback.c.label)).all()
    return [*map(tuple, logged), *map(tuple, labels)]


def _create_together(engines: list[Engine]) -> list[BaseException]:
    """``create_tables`` on every engine at the same moment (one thread each); the errors raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        barrier.wait()
        try:
            create_tables(engine)
        except BaseException as exc:  # returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_the_module_names_the_newest_migration() -> None:
    assert log_migrations.head() == SCHEMA_REVISION


def test_a_fresh_log_is_created_at_the_newest_revision_with_todays_tables(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    assert prediction_log._revision(engine) == SCHEMA_REVISION
    assert _schema_differences(engine) == []
    with engine.begin() as connection:  # the route is checked by the database, defaulting to champion
        connection.execute(
            insert(predictions).values(
                id="a",
                created_at=START,
                model_name="m",
                model_version="1",
                **dict.fromkeys(V1_FEATURES, 0.5),
                probability=0.5,
                prediction=1,
            )
        )
        assert connection.execute(select(predictions.c[ROUTE])).scalar_one() == ROUTE_CHAMPION
        connection.execute(update(predictions).values({ROUTE: ROUTE_CANARY}))
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(update(predictions).values({ROUTE: "shadow"}))
    engine.dispose()


def test_a_v1_log_with_rows_is_upgraded_in_place_and_keeps_them(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    _v1_log_with_rows(engine)
    with engine.connect() as connection:
        before = connection.execute(select(v1_predictions.c.id, v1_predictions.c.probability)).all()
        labels_before = connection.execute(select(v1_feedback.c.prediction_id, v1_feedback.c.label)).all()

    create_tables(engine)

    assert prediction_log._revision(engine) == SCHEMA_REVISION
    assert _schema_differences(engine) == []
    after = _rows(engine)
    assert after[: len(before)] == sorted((pid, p, ROUTE_CHAMPION) for pid, p in before)
    assert after[len(before) :] == [tuple(row) for row in labels_before]
    create_tables(engine)  # current: nothing to do, nothing lost
    assert _rows(engine) == after
    engine.dispose()


def test_shadow_answers_of_an_older_log_move_to_batches_one_per_scored_batch(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    before = _v3_log_with_shadow_answers(engine)
    create_tables(engine)
    assert prediction_log._revision(engine) == SCHEMA_REVISION
    assert _schema_differences(engine) == []
    assert _shadow_answers(engine) == before
    with engine.connect() as connection:
        batches = connection.execute(select(prediction_log.shadow_batches.c.rows)).scalars().all()
    assert sorted(batches) == [2, 4, 5]
    engine.dispose()


def test_replicas_upgrading_one_sqlite_log_at_once_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    _v1_log_with_rows(make_engine(url), rows=2000)
    engines = [make_engine(url) for _ in range(4)]
    assert _create_together(engines) == []
    assert prediction_log._revision(engines[0]) == SCHEMA_REVISION
    assert len(_rows(engines[0])) == 2000 + 400
    for engine in engines:
        engine.dispose()


def test_readers_leave_a_missing_log_alone_and_upgrade_an_old_one(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    assert log_window.read_window(engine, "3").empty
    assert inspect(engine).get_table_names() == []  # creating the log is serving's job
    _v1_log_with_rows(engine)
    assert len(log_window.read_window(engine, "3")) == 50  # an old API's log is read after upgrading
    assert prediction_log._revision(engine) == SCHEMA_REVISION
    engine.dispose()


@pytest.mark.slow
def test_postgres_v1_log_upgraded_by_replicas_at_once_keeps_its_rows(postgres_url: str) -> None:
    _v1_log_with_rows(make_engine(postgres_url), rows=2000)
    engines = [make_engine(postgres_url) for _ in range(4)]
    before = _rows_v1(engines[0])
    assert _create_together(engines) == []
    assert prediction_log._revision(engines[0]) == SCHEMA_REVISION
    assert _schema_differences(engines[0]) == []
    after = _rows(engines[0])
    assert [row[:2] for row in after[:2000]] == before
    assert {row[2] for row in after[:2000]} == {ROUTE_CHAMPION}
    assert len(after) == 2400
    for engine in engines:
        engine.dispose()


@pytest.mark.slow
def test_postgres_shadow_answers_of_an_older_log_move_to_batches(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    before = _v3_log_with_shadow_answers(engine)
    create_tables(engine)
    assert _schema_differences(engine) == []
    assert _shadow_answers(engine) == before
    engine.dispose()


@pytest.mark.slow
def test_postgres_fresh_log_created_by_replicas_at_once(postgres_url: str) -> None:
    engines = [make_engine(postgres_url) for _ in range(4)]
    assert _create_together(engines) == []
    assert prediction_log._revision(engines[0]) == SCHEMA_REVISION
    assert _schema_differences(engines[0]) == []
    for engine in engines:
        engine.dispose()


def _rows_v1(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(v1_predictions.c.id, v1_predictions.c.probability).order_by(v1_predictions.c.id)
        ).all()
    return [tuple(row) for row in rows]
