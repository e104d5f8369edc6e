"""Fixtures for monitoring: a registered champion with its reference set, and a real prediction log."""

from __future__ import annotations

from typing import Any

import mlflow
import pytest
from monitoring_support import Champion, TrafficWriter, fit_champion
from sqlalchemy import Engine

from flows import registry
from reggaeton import names, prediction_log
from reggaeton.settings import Settings


@pytest.fixture(scope="session")
def fitted_champion() -> tuple[Any, float, Any]:
    """One fit for the whole session (fitting is the slow part, registering is cheap)."""
    return fit_champion()


@pytest.fixture
def champion(settings: Settings, fitted_champion: tuple[Any, float, Any]) -> Champion:
    """The fitted pipeline registered as the champion in this test's MLflow store."""
    pipeline, threshold, reference = fitted_champion
    client = registry.connect(settings)
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(pipeline, reference, threshold)
        registry.log_reference(reference)
    version = registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: threshold})
    client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version.version)
    return Champion(version=str(version.version), pipeline=pipeline, threshold=threshold, reference=reference)


@pytest.fixture
def log_engine(settings: Settings) -> Engine:
    """The prediction log (a real SQLite file in this test's state folder)."""
    settings.ensure_state_dir()
    engine = prediction_log.make_engine(settings.prediction_log_url)
    prediction_log.create_tables(engine)
    return engine


@pytest.fixture
def traffic(log_engine: Engine, champion: Champion) -> TrafficWriter:
    """A writer of simulated traffic for the registered champion."""
    return TrafficWriter(log_engine, champion)
