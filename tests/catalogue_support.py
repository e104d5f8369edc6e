"""Helpers for the batch scoring tests: a version registered in a SQLite MLflow store, catalogues on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from adapters import registry
from reggaeton import names, synthetic
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.model import RANDOM_FOREST, build_pipeline
from reggaeton.schema import FEATURE_NAMES, TARGET
from reggaeton.settings import Settings

# Rows of `catalogue_frame` outside the schema (1-based row numbers) and the reason each gets.
BAD_ROWS = {
    3: ("loudness", "loudness 125.513 is outside [-60, 0]"),
    7: ("tempo", "tempo is missing"),
    11: ("energy", "energy is not a number"),
}


def scoring_settings(state: Path, **batch: Any) -> Settings:
    """Settings with their own state folder (the SQLite MLflow store in it) and small chunks."""
    return Settings(state_dir=state, batch={"chunk_rows": 1000, "workers": 1, **batch})


def register_forest(settings: Settings, *, threshold: float = 0.4, trees: int = 20, seed: int = 0) -> str:
    """A small random forest (a tree ensemble, as the champion usually is) registered with a threshold."""
    client = registry.connect(settings)
    data = split(synthetic_dataset(600, seed=3), 0.3, seed=3)
    pipeline = build_pipeline(RANDOM_FOREST, {"n_estimators": trees, "min_samples_leaf": 3}, seed=seed)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(pipeline, data.holdout, threshold=threshold)
    version = registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: threshold})
    return str(version.version)


def catalogue_frame(rows: int, seed: int = 1, bad: bool = True) -> pd.DataFrame:
    """Synthetic songs with a text id, features as the text a CSV holds; ``bad``: the BAD_ROWS too."""
    frame = synthetic.generate(rows, seed)[list(FEATURE_NAMES)].round(4).astype(object)
    frame.insert(0, "track_id", [f"t{seed}-{i:07d}" for i in range(rows)])
    frame.insert(1, "popularity", np.arange(rows) % 100)
    if bad:
        frame.loc[2, "loudness"] = 125.513
        frame.loc[6, "tempo"] = None
        frame.loc[10, "energy"] = "abc"
    return frame


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Numbers as numbers (a text that is not one becomes a null: Parquet columns have one type)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    numeric = frame.copy()
    for name in FEATURE_NAMES:
        numeric[name] = pd.to_numeric(numeric[name], errors="coerce")
    numeric.to_parquet(path, index=False)
    return path
