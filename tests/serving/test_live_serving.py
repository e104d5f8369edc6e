"""The challenger inside a replica: shadow scoring off the request path, its failures, and the canary.

Real prediction log (SQLite), real writer threads; the models are small Python models whose behaviour
the test chooses (scores well, raises, hangs, answers nonsense, answers late).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shadow_support import logged_shadow_answers
from sklearn.linear_model import LogisticRegression
from sqlalchemy import Connection, Engine, func, select

from adapters.prediction_log import (
    FEEDBACK_PREDICTION_ID,
    MODEL_VERSION,
    PREDICTION_ID,
    ROUTE,
    ROUTE_CANARY,
    ROUTE_CHAMPION,
    create_tables,
    live_stats,
    make_engine,
    predictions,
    shadow_batches,
)
from reggaeton.names import CLIENT_HEADER
from reggaeton.settings import LiveSettings
from serving.holder import ModelHolder, ServedModel
from serving.live import LiveAssignment, LiveHolder, LiveStats
from serving.log_writer import PredictionLogWriter
from serving.metrics import ServingMetrics
from serving.service import Live, PredictionService
from serving.shadow import ShadowScorer, ShadowWriter

POLICY = LiveSettings(shadow_timeout_s=0.3, canary_timeout_s=0.2, stats_interval_s=0.2)


class _Model:
    """A fitted logistic regression; ``behaviour`` may make a call raise, hang, answer nonsense or late."""

    def __init__(self, behaviour: str = "good", release: threading.Event | None = None) -> None:
        rng = np.random.default_rng(0)
        features = rng.random((80, 7))
        self._model = LogisticRegression().fit(features, (features[:, 0] > 0.5).astype(int))
        self.behaviour = behaviour
        self.release = release or threading.Event()
        self.calls = 0

    def predict_proba(self, features: np.ndarray) -> Any:
        self.calls += 1
        if self.behaviour == "raises":
            raise RuntimeError("challenger broken")
        if self.behaviour == "hangs":
            self.release.wait()
        if self.behaviour == "late":
            time.sleep(0.5)
        proba = self._model.predict_proba(features)
        if self.behaviour == "nonsense":
            proba[:, 1] = np.nan
        return proba


def _served(model: Any, version: str) -> ServedModel:
    return ServedModel("reggaeton-classifier", version, None, model, 0.5, datetime.now(UTC), "registry")


@dataclass
class _Replica:
    service: PredictionService
    live: Live
    log: PredictionLogWriter
    engine: Engine
    metrics: ServingMetrics
    events: list[tuple[str, ...]] = field(default_factory=list)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def _replica(
    tmp_path: Path,
    challenger: ServedModel | None,
    share: float = 0.0,
    policy: LiveSettings = POLICY,
) -> AsyncIterator[_Replica]:
    engine = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    create_tables(engine)
    metrics = ServingMetrics()
    log = PredictionLogWriter(engine, metrics, capacity_rows=10_000, batch_rows=500, flush_interval_s=0.05)
    stats = LiveStats("replica-a")
    events: list[tuple[str, ...]] = []
    shadow = ShadowScorer(
        policy, metrics, stats, ShadowWriter(engine, metrics, stats, policy), lambda *a: events.append(a)
    )
    live = Live(LiveHolder(), shadow, stats, policy)
    holder = ModelHolder()
    holder.swap(_served(_Model(), "1"))
    if challenger is not None:
        live.holder.swap(LiveAssignment(challenger, share))
    service = PredictionService(holder, log, metrics, 64, live)
    log.start()
    shadow.start()
    replica = _Replica(service, live, log, engine, metrics, events)
    try:
        yield replica
    finally:
        await service.close()
        await asyncio.to_thread(shadow.close, 5.0)
        await log.close()


def _songs(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((1, 7)) for _ in range(count)]


async def _send(
    replica: _Replica, count: int, headers: Callable[[int], list[tuple[bytes, bytes]]] | None = None
) -> list[Any]:
    answers = await asyncio.gather(
        *(
            replica.service.predict(song, headers(i) if headers else None)
            for i, song in enumerate(_songs(count))
        )
    )
    return [row for answer in answers for row in answer]


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _count(engine: Engine, query: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _shadow_answers(connection: Connection) -> list[tuple[str, str]]:
    """(prediction id, version) of every shadow answer logged."""
    return [(row[FEEDBACK_PREDICTION_ID], row[MODEL_VERSION]) for row in logged_shadow_answers(connection)]


def test_the_shadow_scores_every_answered_request_under_the_same_id(tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with _replica(tmp_path, _served(_Model(), "2")) as replica:
            answered = await _send(replica, 200)
            await replica.log.flush()
            _wait(lambda: replica.sample("reggaeton_shadow_rows_total", outcome="written") == 200)
            return answered

    answered = asyncio.run(scenario())
    engine = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    assert {row["model_version"] for row in answered} == {"1"}  # the champion answered every request
    with engine.connect() as connection:
        shadow_rows = _shadow_answers(connection)
        shadow = dict(shadow_rows)
        routes = dict(connection.execute(select(predictions.c[PREDICTION_ID], predictions.c[ROUTE])).all())
        stats = connection.execute(select(live_stats)).mappings().all()
    assert set(shadow) == {row["id"] for row in answered} == set(routes)
    assert len(shadow_rows) == len(shadow)  # each request's shadow answer once
    assert set(shadow.values()) == {"2"}
    assert set(routes.values()) == {ROUTE_CHAMPION}
    shadow_stats = [row for row in stats if row["role"] == "shadow"]
    assert sum(row["rows"] for row in shadow_stats) == 200
    assert {row["model_version"] for row in shadow_stats} == {"2"}
    champion_stats = [row for row in stats if row["role"] == "champion"]
    assert sum(row["attempts"] for row in champion_stats) == 200


def test_under_overload_shadow_work_is_shed_and_champion_answers_do_not_wait(tmp_path: Path) -> None:
    hung = _Model("hangs")
    policy = POLICY.model_copy(update={"shadow_queue_rows": 50, "shadow_timeout_s": 60.0})

    async def scenario() -> tuple[int, float, float, float, int]:
        async with _replica(tmp_path, _served(hung, "2"), policy=policy) as replica:
            first = await _send(replica, 300)  # beyond the queue's 50 rows: shed
            shed_first = replica.sample("reggaeton_shadow_rows_total", outcome="shed")
            await asyncio.to_thread(_wait, lambda: hung.calls == 1)  # the shadow model now holds a call
            second = await _send(replica, 300)  # answered all the same; the queue refills, then sheds
            shed = replica.sample("reggaeton_shadow_rows_total", outcome="shed")
            queued = replica.sample("reggaeton_shadow_queue_rows")
            await replica.log.flush()
            hung.release.set()
            return len(first) + len(second), shed_first, shed, queued, hung.calls

    answered, shed_first, shed, queued, calls = asyncio.run(scenario())
    engine = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    assert answered == 600 == _count(engine, select(func.count()).select_from(predictions))
    assert shed_first >= 300 - 50  # whole micro-batches are kept or shed: at most the queue's 50 kept
    assert queued <= 50
    assert shed - shed_first >= 300 - 50  # the second burst: the queue (emptied into the hung call) refills
    assert calls == 1


@pytest.mark.parametrize(
    ("behaviour", "outcome"), [("raises", "raised"), ("nonsense", "invalid"), ("hangs", "timeout")]
)
def test_a_failing_shadow_changes_no_answer_is_counted_and_announced_once(
    tmp_path: Path, behaviour: str, outcome: str
) -> None:
    model = _Model(behaviour)

    async def scenario() -> tuple[list[Any], float, list[tuple[str, ...]], float]:
        async with _replica(tmp_path, _served(model, "2")) as replica:
            first = await _send(replica, 40)
            _wait(lambda: replica.sample("reggaeton_shadow_rows_total", outcome=outcome) > 0)
            second = await _send(replica, 40)
            await asyncio.sleep(0.4)
            episodes = replica.sample("reggaeton_challenger_failing_episodes_total", role="shadow")
            failed = replica.sample("reggaeton_shadow_rows_total", outcome=outcome)
            model.release.set()
            return first + second, episodes, list(replica.events), failed

    answered, episodes, events, failed = asyncio.run(scenario())
    assert len(answered) == 80 and {row["model_version"] for row in answered} == {"1"}
    assert all(0 <= row["probability"] <= 1 for row in answered)
    assert failed > 0
    assert episodes == 1
    assert len(events) == 1 and events[0][:3] == ("shadow", "2", outcome)
    engine = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    assert _count(engine, select(func.count()).select_from(shadow_batches)) == 0
    assert _count(engine, select(func.count()).select_from(predictions)) == 80


def test_the_canary_answers_its_share_and_the_champion_scores_those_requests(tmp_path: Path) -> None:
    def client(i: int) -> list[tuple[bytes, bytes]]:
        return [(CLIENT_HEADER.encode(), f"client-{i % 10}".encode())]

    # A deadline no loaded machine reaches: every canary request is answered by the canary itself.
    patient = POLICY.model_copy(update={"canary_timeout_s": 30.0})

    async def scenario() -> list[Any]:
        async with _replica(tmp_path, _served(_Model(), "2"), share=0.5, policy=patient) as replica:
            answered = await _send(replica, 400, client)
            await replica.log.flush()
            _wait(lambda: replica.sample("reggaeton_shadow_rows_total", outcome="written") == 400)
            return answered

    answered = asyncio.run(scenario())
    by_client: dict[int, set[str]] = {}
    for i, row in enumerate(answered):
        by_client.setdefault(i % 10, set()).add(row["model_version"])
    assert all(len(versions) == 1 for versions in by_client.values())  # sticky per client key
    assert {"1", "2"} == set().union(*by_client.values())
    engine = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    with engine.connect() as connection:
        logged = {
            row[0]: (row[1], row[2])
            for row in connection.execute(
                select(predictions.c[PREDICTION_ID], predictions.c[ROUTE], predictions.c[MODEL_VERSION])
            )
        }
        shadow_rows = _shadow_answers(connection)
        shadow = dict(shadow_rows)
    assert len(shadow_rows) == len(shadow)  # each request's other answer once
    assert len(logged) == 400
    for answer in answered:
        route, version = logged[answer["id"]]
        assert (route, version) == (
            (ROUTE_CANARY, "2") if answer["model_version"] == "2" else (ROUTE_CHAMPION, "1")
        )
        assert shadow[answer["id"]] == ("1" if version == "2" else "2")  # the other model's answer


@pytest.mark.parametrize(
    ("behaviour", "outcome"),
    [("raises", "fallback_raised"), ("late", "fallback_timeout"), ("nonsense", "fallback_invalid")],
)
def test_a_failing_canary_fails_no_request_the_champion_answers(
    tmp_path: Path, behaviour: str, outcome: str
) -> None:
    async def scenario() -> tuple[list[Any], float, float]:
        async with _replica(tmp_path, _served(_Model(behaviour), "2"), share=1.0) as replica:
            answered = await _send(replica, 30)
            await replica.log.flush()
            return (
                answered,
                replica.sample("reggaeton_canary_requests_total", outcome=outcome),
                replica.sample("reggaeton_challenger_failing_episodes_total", role="canary"),
            )

    answered, fallbacks, episodes = asyncio.run(scenario())
    assert len(answered) == 30 and {row["model_version"] for row in answered} == {"1"}
    assert fallbacks == 30
    assert episodes == 1
    engine = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    with engine.connect() as connection:
        rows = connection.execute(select(predictions.c[ROUTE], predictions.c[MODEL_VERSION])).all()
        stats = connection.execute(select(live_stats).where(live_stats.c.role == "canary")).mappings().all()
    assert len(rows) == 30 and set(rows) == {(ROUTE_CHAMPION, "1")}  # one row per answered request
    counter = {"fallback_raised": "raised", "fallback_timeout": "timeouts", "fallback_invalid": "invalid"}[
        outcome
    ]
    assert sum(row[counter] for row in stats) == 30
    assert sum(row["attempts"] for row in stats) == 30


def test_without_a_challenger_nothing_is_shadowed_or_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _replica(tmp_path, None) as replica:
            await _send(replica, 50)
            await replica.log.flush()

    asyncio.run(scenario())
    engine = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    assert _count(engine, select(func.count()).select_from(shadow_batches)) == 0
    assert _count(engine, select(func.count()).select_from(live_stats)) == 0
    assert _count(engine, select(func.count()).select_from(predictions)) == 50
