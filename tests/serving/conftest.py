"""Fixtures for the serving tests: a real SQLite MLflow registry, real uvicorn servers on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serving_support import Registry, Server, make_settings, promote, register_version, run_server

from reggaeton.settings import Settings


@pytest.fixture(scope="session")
def registry_versions(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """One SQLite MLflow store for all serving tests (creating one is slow); tests move the alias."""
    settings = Settings(state_dir=tmp_path_factory.mktemp("registry") / "state")
    good = tuple(
        register_version(settings, c=c, threshold=t) for c, t in ((1.0, 0.5), (0.1, 0.3), (10.0, 0.6))
    )
    poisoned = register_version(settings, poison=True)
    no_threshold = register_version(settings, c=2.0, threshold=None)
    return Registry(settings, good, poisoned, no_threshold)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, registry_versions: Registry) -> Iterator[Server]:
    """One server on the first good version, shared by the read-mostly tests of a module."""
    settings = make_settings(
        tmp_path_factory.mktemp("served") / "state",
        registry_versions.settings,
        max_batch=16,
        max_body_bytes=4096,
    )
    promote(registry_versions.settings, registry_versions.good[0])
    with run_server(settings) as server:
        yield server
