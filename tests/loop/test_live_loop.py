"""Live evidence end to end on one real stack under the shadow policy (the module's `live_stack`).

Real Prefect server and worker, MLflow server, API and alert receiver; traffic and late labels through
the API. The schedules are paused: each test runs the deployments it needs, so no scheduled monitor or
live gate acts between its steps.

- a drift retrain goes under live evaluation, not into production, and is promoted by the live gate only
  after live labelled evidence, which its decision shows;
- a challenger trained on stale data, better offline, is rejected on the live rows;
- a challenger that raises on every live request fails none of them and is rejected;
- a canary whose challenger is slow is aborted and rolled back with no failed request;
- the champion's monitoring window holds its own answers only: no shadow or canary answer.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sqlalchemy import select

from adapters import log_window, prediction_log, registry
from adapters.prefect_api import prefect_api
from embedded import demo, manual, stack
from embedded.receiver import read_alerts
from flows import live_gate, promote
from flows.deploy import deploy
from monitoring import simulate
from reggaeton import live, names, synthetic
from reggaeton.data import features_array
from reggaeton.model import HIST_GRADIENT_BOOSTING, build_pipeline
from reggaeton.schema import FEATURE_NAMES, TARGET
from reggaeton.servable import examples_array
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def deployed(live_stack: Settings) -> Settings:
    """The deployments, with every schedule paused: the tests run what they need, when they need it."""
    deploy(live_stack, project_dir=REPO_ROOT)
    with prefect_api(live_stack), get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            client.pause_deployment(deployment.id)
    return live_stack


# --- the registry ---------------------------------------------------------------------------------------
def _client(settings: Settings) -> MlflowClient:
    return registry.connect(settings)  # also this process's MLflow, where _register logs the runs


def _register(settings: Settings, pipeline: Any, rows: pd.DataFrame, fit: bool = True) -> str:
    """Fit on three quarters of ``rows``, log with a reference set of the rest, register; the version."""
    train, holdout = train_test_split(rows, test_size=0.25, stratify=rows[TARGET], random_state=0)
    if fit:
        pipeline.fit(features_array(train), train[TARGET].to_numpy())
    proba = pipeline.predict_proba(features_array(holdout))[:, 1]
    client = _client(settings)
    with mlflow.start_run(
        experiment_id=registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    ):
        info = registry.log_model(pipeline, holdout, threshold=0.5)
        registry.log_reference(registry.reference_frame(holdout, proba, 0.5))
    return str(
        registry.register(client, info, settings.mlflow.model_name, {names.Tag.THRESHOLD: 0.5}).version
    )


def _tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(_client(settings).get_model_version(settings.mlflow.model_name, version).tags)


def _decision(settings: Settings, version: str) -> dict[str, Any]:
    detail: dict[str, Any] = json.loads(_tags(settings, version)[names.Tag.DECISION_DETAIL])
    return detail


def _champion(settings: Settings) -> str | None:
    return demo.champion_version(_client(settings), settings)


def _promote(settings: Settings, version: str) -> None:
    with prefect_api(settings):
        promote.promote_version(version, "the champion this test needs", by="test", settings=settings)
    manual.wait_until(
        f"the API serving {version}", lambda: demo.served_version(settings) == version or None, 120, 0.5
    )


def _under_evaluation(settings: Settings, version: str, share: float = 0.0) -> None:
    """Wait until the API shadows ``version`` (and lets it answer ``share`` of the requests)."""

    def shadowed() -> bool | None:
        found = re.search(
            r'reggaeton_challenger_info\{model_version="(\w+)",share="([\d.]+)"\} 1', _metrics(settings)
        )
        return True if found and found.group(1) == version and float(found.group(2)) == share else None

    manual.wait_until(f"the API shadowing version {version} (canary {share:.0%})", shadowed, 60, 0.5)


def _metrics(settings: Settings) -> str:
    return httpx.get(f"{stack.api_url(settings)}/metrics", timeout=10).text


def _sample(settings: Settings, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{name}\{{{re.escape(selector)}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, _metrics(settings), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _run(settings: Settings, deployment: str) -> None:
    run = manual.run_when_free(settings, deployment, wait_s=300, timeout_s=900)
    assert run.state is not None and run.state.is_completed(), f"{deployment}: {run.state}"


def _labelled_traffic(settings: Settings, count: int, seed: int, scenario: str = "drift") -> None:
    """Songs through the API, with the true label of 60 % of them right after (the simulator)."""
    options = simulate.Run(
        scenario=scenario, count=count, seed=seed, batch=50, feedback_fraction=0.6, feedback_delay_s=0.0
    )
    counts = simulate.run(stack.api_url(settings), settings.serving.admin_token.get_secret_value(), options)
    assert counts["sent"] == count and counts["refused"] == 0


@dataclass
class Traffic:
    """Steady one-song requests from many clients (a sticky canary key each): answers and failures."""

    url: str
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        songs = simulate.traffic("stable", 500, seed=3)[list(FEATURE_NAMES)].to_dict(orient="records")
        with httpx.Client(timeout=30) as client:
            for i, song in enumerate(itertools.cycle(songs)):
                if self._stop.wait(0.01):
                    return
                headers = {names.CLIENT_HEADER: f"client-{i % 40}"}
                try:
                    response = client.post(f"{self.url}/predict", json=song, headers=headers)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    self.versions.append(str(response.json()["predictions"][0]["model_version"]))

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def traffic(deployed: Settings) -> Iterator[Traffic]:
    steady = Traffic(stack.api_url(deployed))
    thread = threading.Thread(target=steady.run, daemon=True)
    thread.start()
    try:
        yield steady
    finally:
        steady.stop()
        thread.join(timeout=60)


def _subjects(settings: Settings) -> list[str]:
    return [alert["subject"] for alert in read_alerts(settings.alerts_path)]


# --- the tests --------------------------------------------------------------------------------------------
def test_a_drift_retrain_is_promoted_only_after_live_labelled_evidence(deployed: Settings) -> None:
    settings = deployed
    base = _register(settings, LogisticRegression(max_iter=500), synthetic.generate(3000, seed=1))
    _promote(settings, base)
    _labelled_traffic(settings, 1500, seed=1)  # the drift, with labels the retrain learns from

    _run(settings, names.TRAIN_DEPLOYMENT)

    challenger = demo.latest_version(_client(settings), settings)
    assert challenger is not None and challenger != base
    assert _champion(settings) == base  # better offline, but not promoted at once
    assert _tags(settings, challenger)[names.Tag.LIVE_STATE] == live.SHADOW
    _under_evaluation(settings, challenger)
    _run(settings, names.LIVE_GATE_DEPLOYMENT)
    assert _champion(settings) == base  # no live label since its live evaluation began: it waits
    assert _tags(settings, challenger)[names.Tag.LIVE_STATE] == live.SHADOW

    _labelled_traffic(settings, 800, seed=2)
    _run(settings, names.LIVE_GATE_DEPLOYMENT)

    assert _champion(settings) == challenger
    decision = _decision(settings, challenger)
    assert decision["live"]["action"] == live.PROMOTE
    assert decision["live"]["labelled"]["verdict"] == live.BETTER
    assert decision["live"]["labelled"]["positives"] >= settings.live.min_positives
    assert decision["live"]["labelled"]["looks"][-1]["gain"]["low"] > 0
    assert decision["pr_auc_gain"]["low"] > 0  # the offline gate, scored again, passed too
    assert _tags(settings, challenger)[names.Tag.LIVE_STATE] == live.CHAMPION
    manual.wait_until(
        "the API serving it", lambda: demo.served_version(settings) == challenger or None, 120, 0.5
    )
    for subject in ("[reggaeton] challenger under live evaluation", "[reggaeton] new champion promoted"):
        manual.wait_until(subject, lambda: subject in _subjects(settings) or None, 60, 0.5)  # noqa: B023


def _subgenre_only(rows: int, seed: int) -> pd.DataFrame:
    """Last month's labels: reggaeton meant the new sub-genre only (other songs, and the sub-genre)."""
    rng = np.random.default_rng(seed)
    others = synthetic.generate(rows, seed)
    others = others[others[TARGET] == 0]
    new = simulate.subgenre_profile().sample(len(others) // 5, rng).assign(**{TARGET: 1})
    return pd.concat([others, new], ignore_index=True).sample(frac=1, random_state=seed)


def test_a_challenger_better_offline_but_worse_live_is_rejected_on_live_evidence(deployed: Settings) -> None:
    settings = deployed
    recent = _register(settings, build_pipeline(HIST_GRADIENT_BOOSTING, {}, seed=0), _subgenre_only(4000, 5))
    _promote(settings, recent)
    # Trained on stale data (before the sub-genre): better on its own held-out rows, blind to today's songs.
    stale = _register(
        settings, build_pipeline(HIST_GRADIENT_BOOSTING, {}, seed=0), synthetic.generate(4000, 6)
    )

    with prefect_api(settings):
        gated = promote.promotion_gate(stale, settings)

    assert gated["outcome"] == live.SHADOW, gated["reason"]
    offline = _decision(settings, stale)
    assert offline["outcome"] == "promoted" and offline["pr_auc_gain"]["low"] > 0  # better offline
    _under_evaluation(settings, stale)
    _labelled_traffic(settings, 800, seed=7)
    _run(settings, names.LIVE_GATE_DEPLOYMENT)

    assert _champion(settings) == recent
    tags = _tags(settings, stale)
    assert tags[names.Tag.LIVE_STATE] == live.REJECTED and tags[names.Tag.DECISION] == "rejected"
    decision = _decision(settings, stale)
    assert decision["reason"].startswith("live gate: worse on live labelled rows")
    assert decision["live"]["labelled"]["verdict"] == live.WORSE
    assert decision["live"]["labelled"]["looks"][-1]["gain"]["high"] < 0


def _raising_model() -> Pipeline:
    """A valid pipeline on the example songs that raises on any other tempo (an unknown category)."""
    tempo = FEATURE_NAMES.index("tempo")
    examples = examples_array()
    encoder = ColumnTransformer(
        [("tempo", OneHotEncoder(handle_unknown="error"), [tempo])], remainder="passthrough"
    )
    return Pipeline([("encode", encoder), ("model", LogisticRegression())]).fit(
        examples, np.arange(len(examples)) % 2
    )


def _put_under_evaluation(settings: Settings, version: str) -> None:
    """An operator puts a version under live evaluation without the offline gate (which could not score
    the raising one): signed like the gate's own start, which is what the replicas follow."""
    with prefect_api(settings):
        live_gate.shadow_start(version, "the test's challenger", by="test", settings=settings)


def test_a_challenger_raising_on_every_call_fails_no_request_and_is_rejected(
    deployed: Settings, traffic: Traffic
) -> None:
    settings = deployed
    champion = _champion(settings)
    rows = synthetic.generate(200, seed=8)
    raising = _register(settings, _raising_model(), rows.assign(tempo=examples_array()[0, 5]), fit=False)
    _put_under_evaluation(settings, raising)
    _under_evaluation(settings, raising)

    manual.wait_until(
        "shadow calls that raised",
        lambda: _sample(settings, "reggaeton_shadow_rows_total", outcome="raised") > 50 or None,
        60,
        0.5,
    )
    _run(settings, names.LIVE_GATE_DEPLOYMENT)
    manual.wait_until(
        "the API no longer shadowing it",
        lambda: "reggaeton_challenger_info{" not in _metrics(settings) or None,
        60,
        0.5,
    )
    traffic.stop()

    assert traffic.failures == []
    assert len(traffic.versions) > 50 and set(traffic.versions) == {champion}
    assert _sample(settings, "reggaeton_challenger_failing_episodes_total", role="shadow") == 1
    decision = _decision(settings, raising)
    assert decision["outcome"] == "rejected" and "too many errors" in decision["reason"]
    assert _tags(settings, raising)[names.Tag.LIVE_STATE] == live.REJECTED
    failing = "[reggaeton] challenger failing on live traffic"
    manual.wait_until("its alert", lambda: failing in _subjects(settings) or None, 60, 0.5)
    assert _subjects(settings).count(failing) == 1


def _slow_model() -> Pipeline:
    """Nearest neighbours by brute force over 50,000 songs in the Minkowski p=3 metric (no BLAS path):
    about ten milliseconds a song, where the champion takes one or two."""
    rows = synthetic.generate(50_000, seed=9)
    knn = KNeighborsClassifier(n_neighbors=25, algorithm="brute", p=3)
    pipeline = Pipeline([("scale", StandardScaler()), ("model", knn)])
    return pipeline.fit(features_array(rows), rows[TARGET].to_numpy())


def test_a_slow_canary_is_aborted_and_rolled_back_with_no_failed_request(
    deployed: Settings, traffic: Traffic
) -> None:
    settings = deployed
    champion = _champion(settings)
    slow = _register(settings, _slow_model(), synthetic.generate(400, seed=10), fit=False)
    _put_under_evaluation(settings, slow)
    with prefect_api(settings):
        live_gate.canary_start(by="test", settings=settings)
    _under_evaluation(settings, slow, share=settings.live.canary_steps[0])
    manual.wait_until("canary answers", lambda: slow in traffic.versions or None, 60, 0.5)
    manual.wait_until(
        "three stats intervals of canary answers",
        lambda: _sample(settings, "reggaeton_canary_requests_total", outcome="answered") > 60 or None,
        60,
        0.5,
    )

    _run(settings, names.LIVE_GATE_DEPLOYMENT)

    tags = _tags(settings, slow)
    assert tags[names.Tag.LIVE_STATE] == live.REJECTED and not tags.get(names.Tag.CANARY_SHARE)
    assert "canary aborted" in tags[names.Tag.DECISION_REASON]
    manual.wait_until(
        "the API back to the champion alone",
        lambda: "reggaeton_challenger_info{" not in _metrics(settings) or None,
        60,
        0.5,
    )
    answered = len(traffic.versions)
    manual.wait_until(
        "answers after the rollback", lambda: len(traffic.versions) > answered + 50 or None, 60, 0.5
    )
    traffic.stop()
    assert traffic.failures == []
    assert set(traffic.versions[answered:]) == {champion}
    manual.wait_until(
        "the abort's alert", lambda: "[reggaeton] canary aborted" in _subjects(settings) or None, 60, 0.5
    )


def test_the_champions_monitoring_window_holds_its_own_answers_only(deployed: Settings) -> None:
    settings = deployed
    champion = _champion(settings)
    assert champion is not None
    # The earlier tests' last answers may still be on their way to the log (the writer's queue, the
    # journal): the window and the rows compared with it are read once everything answered is written.
    manual.wait_until(
        "the API's prediction log caught up",
        lambda: (
            (
                _sample(settings, "reggaeton_prediction_log_queue_rows") == 0
                and _sample(settings, "reggaeton_prediction_log_database_up") == 1
                and _sample(settings, "reggaeton_prediction_log_spool_oldest_age_seconds") == 0
            )
            or None
        ),
        60,
        0.5,
    )
    engine = prediction_log.make_engine(settings.prediction_log_url)
    try:
        window = log_window.read_window(engine, champion)
        p, s = prediction_log.predictions.c, prediction_log.shadow_answers(engine.dialect.name).c
        with engine.connect() as connection:
            own = dict(
                connection.execute(
                    select(p.id, p.probability).where(
                        p.model_version == champion, p.route == prediction_log.ROUTE_CHAMPION
                    )
                ).all()
            )
            canary = {
                row[0]
                for row in connection.execute(select(p.id).where(p.route == prediction_log.ROUTE_CANARY))
            }
            shadowed = {
                row[0]
                for row in connection.execute(select(s.prediction_id).where(s.model_version != champion))
            }
    finally:
        engine.dispose()
    ids = set(window[prediction_log.PREDICTION_ID])
    assert ids == set(own)  # every answer of the champion, and nothing else
    assert canary and not ids & canary  # the canary's answers exist, and are not in its window
    assert len(ids & shadowed) > 100  # challengers shadowed these requests: their answers stayed out
    by_id = dict(zip(window[prediction_log.PREDICTION_ID], window["probability"], strict=True))
    assert all(by_id[pid] == own[pid] for pid in ids)  # the champion's own probabilities
