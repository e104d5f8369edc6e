"""The container stacks' MLflow auth configuration, as MLflow itself reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.services import MLFLOW_AUTH_CONFIG, service

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_mlflow_denies_by_default_and_caches_a_checked_credential_on_its_one_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.server.auth.config import read_auth_config

    mlflow = service("mlflow")
    path = REPO_ROOT / Path(MLFLOW_AUTH_CONFIG).relative_to("/app")
    assert mlflow.environment["MLFLOW_AUTH_CONFIG_PATH"] == MLFLOW_AUTH_CONFIG
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    config = read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    # Cached (a scrypt check per call costs ~100 ms of the server's CPU), briefly, and only where a
    # password changed through the API reaches the cache at once: a single worker.
    assert 0 < config.auth_cache_ttl_seconds <= 60
    command = list(mlflow.command or ())
    assert command[command.index("--workers") + 1] == "1"
