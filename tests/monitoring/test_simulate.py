"""The traffic simulator: calibrated scenarios in process, and the HTTP client over a real socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from monitoring_support import fit_champion
from sklearn.metrics import roc_auc_score

from monitoring import simulate
from monitoring.api_client import PredictionApi
from reggaeton import synthetic
from reggaeton.calibration import REGGAETON_PRIOR
from reggaeton.data import features_array
from reggaeton.model import RANDOM_FOREST, build_pipeline
from reggaeton.schema import FEATURE_NAMES, TARGET, validate_frame

TOKEN = "test-admin-token"


def test_stable_traffic_keeps_the_calibrated_profile() -> None:
    songs = simulate.traffic("stable", 5000, seed=1)
    validate_frame(songs, "stable", require_target=True)
    assert songs[TARGET].mean() == pytest.approx(REGGAETON_PRIOR, abs=0.002)
    assert simulate.traffic("stable", 5000, seed=1).equals(songs)


def test_drift_adds_a_reggaeton_sub_genre_with_other_tempo_acousticness_energy() -> None:
    stable = simulate.traffic("stable", 6000, seed=2)
    drift = simulate.traffic("drift", 6000, seed=2)
    validate_frame(drift, "drift", require_target=True)
    assert drift[TARGET].mean() == pytest.approx(REGGAETON_PRIOR * 0.7 + simulate.DRIFT_SHARE, abs=0.01)
    old, new = stable[stable[TARGET] == 1], drift[drift[TARGET] == 1]
    assert new["acousticness"].median() > old["acousticness"].median()
    assert new["energy"].median() < old["energy"].median()
    assert abs(new["tempo"].median() - old["tempo"].median()) > 5
    with pytest.raises(ValueError, match="unknown scenario"):
        simulate.traffic("chaos", 10, seed=0)


def test_drift_hurts_the_champion_and_a_retrain_on_its_labels_fixes_it() -> None:
    """The loop's premise: the sub-genre is the champion's blind spot, yet learnable from feedback."""
    champion, _, _ = fit_champion()
    labelled = pd.concat([synthetic.generate(2300, 3), simulate.traffic("drift", 3000, seed=11)])
    retrained = build_pipeline(RANDOM_FOREST, {"n_estimators": 100, "min_samples_leaf": 3}, seed=0)
    retrained.fit(features_array(labelled), labelled[TARGET])
    stable = simulate.traffic("stable", 4000, seed=12)
    drift = simulate.traffic("drift", 4000, seed=12)

    def auc(model: Any, songs: pd.DataFrame) -> float:
        return float(roc_auc_score(songs[TARGET], model.predict_proba(features_array(songs))[:, 1]))

    usual, before, after = auc(champion, stable), auc(champion, drift), auc(retrained, drift)
    print(f"ROC-AUC: champion {usual:.3f} stable, {before:.3f} drift; retrained {after:.3f} drift")
    assert usual > 0.9 and before < 0.8  # degraded by the policy's default threshold
    assert after > 0.9 and after - before > 0.15


class ContractApi:
    """A minimal server with the prediction API's contract, to exercise the simulator's HTTP path."""

    def __init__(self) -> None:
        self.predicted: list[dict[str, float]] = []
        self.labels: dict[str, int] = {}
        self.app = FastAPI()

        @self.app.post("/predict")
        def predict(songs: list[dict[str, float]]) -> dict[str, list[dict[str, Any]]]:
            start = len(self.predicted)
            self.predicted.extend(songs)
            return {
                "predictions": [
                    {"id": f"p{start + i}", "probability": 0.1, "label": 0, "model_version": "1"}
                    for i, song in enumerate(songs)
                    if set(song) == set(FEATURE_NAMES)
                ]
            }

        @self.app.post("/feedback")
        def feedback(body: dict[str, Any], authorization: str = Header("")) -> dict[str, str]:
            if authorization != f"Bearer {TOKEN}":
                raise HTTPException(status_code=401, detail="admin token required")
            self.labels[body["prediction_id"]] = int(body["label"])
            return {"status": "recorded"}


@pytest.fixture
def contract_api() -> Iterator[tuple[str, ContractApi]]:
    api = ContractApi()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", api
    server.should_exit = True
    thread.join(timeout=10)


def test_send_posts_batches_and_delayed_labels(contract_api: tuple[str, ContractApi]) -> None:
    url, server = contract_api
    songs = simulate.traffic("drift", 230, seed=3)
    with PredictionApi(url, TOKEN) as api:
        counts = simulate.send(
            api, songs, batch=50, feedback_fraction=0.5, feedback_delay_s=0.2, max_seconds=30, seed=3
        )
    assert counts["sent"] == 230 and counts["refused"] == 0
    assert len(server.predicted) == 230
    assert 70 < counts["labelled"] < 160 and len(server.labels) == counts["labelled"]
    expected = songs[TARGET].to_numpy()
    assert all(server.labels[f"p{i}"] == expected[i] for i in (int(k[1:]) for k in server.labels))
    np.testing.assert_allclose(server.predicted[0]["tempo"], songs["tempo"].iloc[0])


def test_send_stops_at_its_time_budget(contract_api: tuple[str, ContractApi]) -> None:
    url, server = contract_api
    with PredictionApi(url, TOKEN) as api:
        started = time.monotonic()
        simulate.send(
            api,
            simulate.traffic("stable", 100, seed=4),
            batch=10,
            feedback_fraction=1.0,
            feedback_delay_s=60,
            max_seconds=1.0,
            seed=4,
        )
    assert time.monotonic() - started < 5
    assert server.labels == {}  # the labels were due after the budget


def test_wrong_admin_token_is_refused(contract_api: tuple[str, ContractApi]) -> None:
    import httpx

    url, _ = contract_api
    with PredictionApi(url, "wrong") as api, pytest.raises(httpx.HTTPStatusError):
        api.feedback("p0", 1)
