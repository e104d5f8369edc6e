"""Batch scoring answers as the API does: the original challenge songs, scored both ways by the same version.

The API serves the rebuilt scorer; the batch scorer calls the pipeline's own predict_proba. Both must give
the same probability to 1e-9 and the same label for every song, and the rows the batch rejects must be
exactly those the API refuses (422 naming the field).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from serving_support import make_settings, promote, run_server

from adapters import registry
from flows.batch_scoring import ScoringRequest, score
from reggaeton import names
from reggaeton.data import features_array, load_folder
from reggaeton.model import baseline_pipeline
from reggaeton.schema import FEATURE_NAMES, TARGET
from reggaeton.scorer import REBUILT, TOLERANCE
from reggaeton.settings import Settings

FILES = ("data_reggaeton.csv", "data_test.csv", "data_todotipo.csv")


def _songs(path: Path) -> list[dict[str, Any]]:
    """Each row's id and features as Python reads them (``float``: correctly rounded, as Arrow and orjson)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{"id_new": row["id_new"], **{name: _number(row[name]) for name in FEATURE_NAMES}} for row in rows]


def _number(text: str) -> float | None:
    return None if text in ("", "NA") else float(text)  # the file writes a missing value as NA


def test_the_original_songs_get_the_apis_answers(original_data: Path, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "registry")
    client = registry.connect(settings)
    data = load_folder(original_data)
    pipeline = baseline_pipeline().fit(features_array(data.frame), data.frame[TARGET])  # the data scientist's
    with mlflow.start_run(
        experiment_id=registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    ):
        info = registry.log_model(pipeline, data.frame, threshold=0.35)
    version = str(registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: 0.35}).version)
    promote(settings, version)

    result = score(settings, ScoringRequest(str(original_data), tmp_path / "scored"))
    batch = pd.read_parquet(tmp_path / "scored" / "scores").set_index(["file", "id_new"])
    rejects = pd.read_parquet(tmp_path / "scored" / "rejects.parquet")

    with run_server(make_settings(tmp_path / "api", settings)) as server, server.client() as api:
        assert api.get("/model").json()["scorer"] == REBUILT  # the API's own scorer, not the batch's
        answered, refused = {}, []
        for name in FILES:
            songs = _songs(original_data / name)
            valid = [song for song in songs if all(song[f] is not None for f in FEATURE_NAMES)]
            for start in range(0, len(valid), 200):
                part = valid[start : start + 200]
                body = [{f: song[f] for f in FEATURE_NAMES} for song in part]
                response = api.post("/predict", json=body)
                assert response.status_code == 200, response.text
                for song, answer in zip(part, response.json()["predictions"], strict=True):
                    answered[(name, song["id_new"])] = answer
            for song in songs:
                if song not in valid:
                    response = api.post("/predict", json={f: song[f] for f in FEATURE_NAMES})
                    assert response.status_code == 422
                    fields = {str(error["loc"][-1]) for error in response.json()["detail"]}
                    refused.append((name, song["id_new"], fields))

    assert len(answered) == result.counts.scored == len(batch) == 2342
    assert len(refused) == result.counts.rejected == len(rejects) == 8
    worst = 0.0
    for key, answer in answered.items():
        row = batch.loc[key]
        worst = max(worst, abs(row["probability"] - answer["probability"]))
        assert (int(row["label"]), row["model_version"]) == (answer["label"], answer["model_version"]), key
    assert worst <= TOLERANCE
    assert not math.isnan(worst) and 0.0 < batch["probability"].min() < batch["probability"].max() < 1.0
    assert batch["label"].sum() > 0  # some songs are reggaeton: the labels are not all one answer
    for (name, song_id, fields), reject in zip(refused, rejects.itertuples(), strict=True):
        assert (reject.file, reject.id_new) == (name, song_id)
        assert reject.field in fields and fields == set(FEATURE_NAMES)
        assert reject.reason == "; ".join(f"{f} is missing" for f in FEATURE_NAMES)


# Slow: it fits the data scientist's 300-tree baseline and starts an API (about 20 s).
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
