"""The whole train-and-promote flow on the original challenge data, twice with the same configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import registry
from flows import promote
from reggaeton import names
from reggaeton.promotion import PROMOTED, REJECTED
from reggaeton.settings import DataSettings, PromotionSettings, Settings, TrainingSettings


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api_url")
def test_first_run_makes_a_champion_and_an_identical_rerun_is_not_better_beyond_noise(
    original_data: Path, tmp_path: Path
) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        data=DataSettings(folder=original_data, include_feedback=False),
        training=TrainingSettings(n_trials=4, cv_folds=3, n_jobs=1, bootstrap_rounds=200),
        promotion=PromotionSettings(bootstrap_rounds=500),
    )
    client = registry.connect(settings)

    first = promote.train_and_promote(settings=settings)

    assert first["outcome"] == PROMOTED, first["reason"]
    assert first["reason"].startswith("no champion yet")
    champion = registry.get_alias(client, names.MODEL_NAME, names.CHAMPION)
    assert champion is not None and str(champion.version) == first["version"]

    second = promote.train_and_promote(settings=settings)

    assert second["version"] != first["version"]
    assert second["outcome"] == REJECTED
    assert second["reason"].startswith("not better beyond noise"), second["reason"]
    champion = registry.get_alias(client, names.MODEL_NAME, names.CHAMPION)
    assert champion is not None and str(champion.version) == first["version"]
    rejected = client.get_model_version(names.MODEL_NAME, second["version"])
    assert rejected.tags[names.Tag.DECISION] == REJECTED
    assert rejected.tags[names.Tag.DECISION_AGAINST] == first["version"]
