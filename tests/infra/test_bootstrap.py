"""The bootstrap job's decisions against real backends (SQLite MLflow registry, a real Prefect server)."""

from __future__ import annotations

import pytest

from infra import bootstrap
from reggaeton import names
from reggaeton.settings import Settings


def test_an_empty_registry_has_no_champion(settings: Settings) -> None:
    assert bootstrap.has_champion(settings) is False


def test_training_refuses_a_missing_deployment(settings: Settings, prefect_api_url: str) -> None:
    with pytest.raises(RuntimeError, match="no deployment named 'no-such-deployment'"):
        bootstrap.run_training(settings, deployment="no-such-deployment", timeout_s=10)


def test_the_training_deployment_is_declared_in_prefect_yaml() -> None:
    import yaml

    from infra.compose import REPO_ROOT

    prefect_file = REPO_ROOT / "prefect.yaml"
    if not prefect_file.is_file():
        pytest.skip("prefect.yaml (the loop's deployments) is not in this checkout yet")
    declared = [d["name"] for d in yaml.safe_load(prefect_file.read_text())["deployments"]]
    assert names.TRAIN_DEPLOYMENT in declared
