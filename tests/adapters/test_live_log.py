"""The live gate's reads (adapters/live_log.py) on a real SQLite prediction log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, insert

from adapters import live_log
from adapters.prediction_log import (
    ROUTE_CANARY,
    ROUTE_CHAMPION,
    create_tables,
    feedback,
    live_stats,
    make_engine,
    predictions,
    shadow_batch,
    shadow_batches,
)
from reggaeton.schema import FEATURE_NAMES

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _answer(
    engine: Engine,
    pid: str,
    at: datetime,
    route: str,
    sent: tuple[str, float],
    other: tuple[str, float] | None,
) -> None:
    """One request: the answer sent (version, probability) and, unless None, the other model's."""
    with engine.begin() as connection:
        connection.execute(
            insert(predictions),
            {
                "id": pid,
                "created_at": at,
                "model_name": "m",
                "model_version": sent[0],
                **dict.fromkeys(FEATURE_NAMES, 0.5),
                "tempo": 100.0,
                "loudness": -5.0,
                "probability": sent[1],
                "prediction": int(sent[1] >= 0.5),
                "route": route,
            },
        )
        if other is not None:
            connection.execute(
                insert(shadow_batches),
                shadow_batch(other[0], "m", at, [(pid, other[1], int(other[1] >= 0.5))]),
            )


def _label(engine: Engine, pid: str, label: int, at: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(insert(feedback), {"prediction_id": pid, "label": label, "received_at": at})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty log on each database the log runs on (the shadow answers are unnested per dialect)."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'log.db'}"


def test_both_answers_of_each_request_whichever_route_sent_it_in_label_order(log_url: str) -> None:
    engine = make_engine(log_url)
    create_tables(engine)
    since = T0
    _answer(engine, "before", T0 - timedelta(minutes=1), ROUTE_CHAMPION, ("1", 0.1), ("2", 0.2))  # too early
    _answer(engine, "a", T0 + timedelta(seconds=1), ROUTE_CHAMPION, ("1", 0.3), ("2", 0.9))
    _answer(engine, "b", T0 + timedelta(seconds=2), ROUTE_CANARY, ("2", 0.8), ("1", 0.4))
    _answer(engine, "c", T0 + timedelta(seconds=3), ROUTE_CHAMPION, ("1", 0.6), None)  # shed: no shadow
    _answer(engine, "d", T0 + timedelta(seconds=4), ROUTE_CHAMPION, ("1", 0.7), ("3", 0.5))  # another version
    _answer(engine, "e", T0 + timedelta(seconds=5), ROUTE_CHAMPION, ("1", 0.2), ("2", 0.1))
    for pid, label, delay in (("before", 1, 9), ("a", 1, 30), ("b", 0, 10), ("c", 1, 11), ("d", 0, 12)):
        _label(engine, pid, label, T0 + timedelta(seconds=delay))
    _label(engine, "e", 1, T0 + timedelta(hours=1))  # arrives after the read's cut-off

    labelled = live_log.labelled_pairs(engine, "1", "2", since, T0 + timedelta(minutes=5))

    assert list(labelled["id"]) == ["b", "a"]  # in the order the labels arrived
    b, a = labelled.to_dict(orient="records")
    assert (b["route"], b[live_log.CHAMPION_PROBA], b[live_log.CHALLENGER_PROBA]) == (ROUTE_CANARY, 0.4, 0.8)
    assert (a["route"], a[live_log.CHAMPION_PROBA], a[live_log.CHALLENGER_PROBA]) == (
        ROUTE_CHAMPION,
        0.3,
        0.9,
    )
    assert (a[live_log.LABEL], b[live_log.LABEL]) == (1, 0)
    assert (a[live_log.CHAMPION_PREDICTION], a[live_log.CHALLENGER_PREDICTION]) == (0, 1)

    recent = live_log.recent_pairs(engine, "1", "2", since, limit=2)
    assert list(recent["id"]) == ["b", "e"]  # the latest two, oldest first, with or without a label
    assert list(recent[live_log.LABEL]) == [0, 1]  # whenever their labels arrived
    unlabelled = live_log.recent_pairs(engine, "1", "2", T0 + timedelta(seconds=5), limit=10)
    _answer(engine, "f", T0 + timedelta(seconds=6), ROUTE_CHAMPION, ("1", 0.2), ("2", 0.1))
    assert list(unlabelled["id"]) == ["e"]
    assert np.isnan(live_log.recent_pairs(engine, "1", "2", T0 + timedelta(seconds=6), 10)[live_log.LABEL][0])


def test_stats_of_the_versions_since_a_time(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    row = {
        "model_name": "m",
        "rows": 0,
        "raised": 0,
        "timeouts": 0,
        "invalid": 0,
        "shed": 0,
        "latency_sum_s": 0.0,
    }
    with engine.begin() as connection:
        for replica, version, start in (("a", "2", 0), ("b", "2", 10), ("a", "1", 10), ("a", "3", 10)):
            at = T0 + timedelta(seconds=start)
            connection.execute(
                insert(live_stats),
                {
                    **row,
                    "replica": replica,
                    "role": "shadow",
                    "model_version": version,
                    "window_start": at,
                    "window_end": at + timedelta(seconds=10),
                    "attempts": 5,
                },
            )

    found = live_log.stats(engine, ("1", "2"), T0 + timedelta(seconds=12))

    assert sorted(zip(found["replica"], found["model_version"], strict=True)) == [("a", "1"), ("b", "2")]
    assert list(found["attempts"]) == [5, 5]
