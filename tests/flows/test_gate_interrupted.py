"""The gate finishes a promotion that a killed run recorded but did not apply."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from adapters.decisions import already_decided
from reggaeton import names
from reggaeton.promotion import PROMOTED, REJECTED


def _decided(version: str, outcome: str, against: str) -> ModelVersion:
    """A version whose tags record a gate decision against ``against`` on the data hashed "hash"."""
    tags = {names.Tag.DECISION: outcome, names.Tag.DECISION_AGAINST: against, names.Tag.DECISION_DATA: "hash"}
    return ModelVersion(
        names.MODEL_NAME, version, 0, tags=[ModelVersionTag(key, value) for key, value in tags.items()]
    )


def test_promoted_but_alias_not_moved_is_decided_again() -> None:
    champion = ModelVersion(names.MODEL_NAME, "1", 0)
    promoted = _decided("2", PROMOTED, against="1")
    rejected = _decided("3", REJECTED, against="1")

    assert already_decided(promoted, champion, "hash") is None  # killed before the alias moved
    assert already_decided(promoted, promoted, "hash") is not None  # the promotion completed
    assert already_decided(rejected, champion, "hash") is not None  # a rejection stands
