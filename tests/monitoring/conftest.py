"""Fixtures for monitoring: a fitted champion with its reference set, and a real prediction log."""

from __future__ import annotations

from typing import Any

import pytest
from monitoring_support import Champion, TrafficWriter, fit_champion
from sqlalchemy import Engine

from adapters import prediction_log
from reggaeton.settings import Settings


@pytest.fixture(scope="session")
def fitted_champion() -> tuple[Any, float, Any]:
    """One fit for the whole session."""
    return fit_champion()


@pytest.fixture
def champion(fitted_champion: tuple[Any, float, Any]) -> Champion:
    """The champion as monitoring sees it: a version, its pipeline, threshold and reference set.

    The registry round trip is covered by the flow test; these tests feed the reference directly.
    """
    pipeline, threshold, reference = fitted_champion
    return Champion(version="1", pipeline=pipeline, threshold=threshold, reference=reference)


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
