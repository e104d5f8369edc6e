"""The gate finishes a promotion that a killed run recorded but did not apply."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from flows.promote import PROMOTED, REJECTED, already_decided
from reggaeton import names


def test_promoted_but_alias_not_moved_is_decided_again() -> None:
    challenger = ModelVersion(
        names.MODEL_NAME,
        "2",
        0,
        tags=[
            ModelVersionTag(names.Tag.DECISION, PROMOTED),
            ModelVersionTag(names.Tag.DECISION_AGAINST, "1"),
            ModelVersionTag(names.Tag.DECISION_DATA, "hash"),
        ],
    )
    rejected = ModelVersion(
        names.MODEL_NAME,
        "3",
        0,
        tags=[
            ModelVersionTag(names.Tag.DECISION, REJECTED),
            ModelVersionTag(names.Tag.DECISION_AGAINST, "1"),
            ModelVersionTag(names.Tag.DECISION_DATA, "hash"),
        ],
    )
    champion = ModelVersion(names.MODEL_NAME, "1", 0)

    assert already_decided(challenger, champion, "hash") is None  # killed before the alias moved
    assert already_decided(challenger, challenger, "hash") is not None  # the promotion completed
    assert already_decided(rejected, champion, "hash") is not None  # a rejection stands
