"""Helpers shared by the monitoring tests: a small champion and a writer of simulated log traffic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from adapters import registry
from monitoring import simulate
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.metrics import best_f1_threshold
from reggaeton.model import RANDOM_FOREST, build_pipeline
from reggaeton.schema import TARGET


@dataclass(frozen=True)
class Champion:
    """A fitted pipeline registered as the champion, with its threshold and reference set."""

    version: str
    pipeline: Any
    threshold: float
    reference: Any


def fit_champion(rows: int = 4000, seed: int = 3) -> tuple[Any, float, Any]:
    """A small pipeline on synthetic data; the held-out half becomes the reference set."""
    data = split(synthetic_dataset(rows, seed=seed), 0.5, seed=seed)
    pipeline = build_pipeline(RANDOM_FOREST, {"n_estimators": 100, "min_samples_leaf": 3}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    proba = pipeline.predict_proba(features_array(data.holdout))[:, 1]
    threshold = best_f1_threshold(data.holdout[TARGET].to_numpy(), proba)
    return pipeline, threshold, registry.reference_frame(data.holdout, proba, threshold)


class TrafficWriter:
    """Writes consecutive windows of simulated traffic into the log, in the past, one per second."""

    def __init__(self, engine: Engine, champion: Champion, start: datetime | None = None) -> None:
        self.engine = engine
        self.champion = champion
        self.next_at = start or datetime.now(UTC) - timedelta(days=10)
        self.windows = 0

    def write(self, scenario: str, rows: int, *, feedback_fraction: float = 0.3) -> None:
        """Log one window of a scenario's songs as the champion's predictions."""
        self.windows += 1
        songs = simulate.traffic(scenario, rows, seed=1000 + self.windows)
        scored = simulate.score(songs, self.champion.pipeline, self.champion.threshold)
        simulate.log_traffic(
            self.engine,
            scored,
            self.champion.version,
            start=self.next_at,
            interval=timedelta(seconds=1),
            feedback_fraction=feedback_fraction,
            seed=self.windows,
        )
        self.next_at += timedelta(seconds=rows)
