"""The servability rule shared by the gate and the server (no registry needed)."""

from __future__ import annotations

import numpy as np
import pytest

from reggaeton import names
from reggaeton.model import LOGISTIC_REGRESSION, NO_REBALANCING, build_pipeline
from reggaeton.scorer import REBUILT
from reggaeton.servable import (
    PROBLEM_MESSAGE_CHARS,
    NotServableError,
    examples_array,
    exception_text,
    servable_scorer,
    threshold_from_tags,
)


def _fitted() -> object:
    rng = np.random.default_rng(0)
    X = examples_array().repeat(20, axis=0) + rng.normal(0, 0.01, (20 * len(examples_array()), 7))
    y = (np.arange(len(X)) % 2).astype(int)
    return build_pipeline(LOGISTIC_REGRESSION, {"C": 1.0, "imbalance": NO_REBALANCING}, seed=0).fit(X, y)


@pytest.mark.parametrize("raw", [None, "", "high", "1.5", "-0.1", "nan"])
def test_a_missing_or_unusable_threshold_is_not_servable(raw: str | None) -> None:
    tags = {} if raw is None else {names.Tag.THRESHOLD: raw}
    with pytest.raises(NotServableError, match="version 3"):
        threshold_from_tags(tags, "3")


def test_a_threshold_in_range_is_read() -> None:
    assert threshold_from_tags({names.Tag.THRESHOLD: "0.25"}, "3") == 0.25


def test_a_good_model_gets_the_scorer_the_server_uses() -> None:
    scorer = servable_scorer(_fitted(), 0.5, "1")
    assert scorer.kind == REBUILT
    proba = scorer.probabilities(examples_array())
    assert proba.shape == (len(examples_array()),) and np.all((proba >= 0) & (proba <= 1))


def test_every_problem_is_named() -> None:
    class NaNModel:
        classes_ = np.array([0, 1])

        def predict_proba(self, features: np.ndarray) -> np.ndarray:
            return np.full((len(features), 2), np.nan)

    with pytest.raises(NotServableError) as raised:
        servable_scorer(NaNModel(), 2.0, "4")
    assert len(raised.value.problems) == 2
    assert "threshold 2.0" in raised.value.problems[0] and "not finite" in raised.value.problems[1]


def test_a_problem_quotes_a_long_exception_message_cut_to_its_limit() -> None:
    """An encoder's "unknown categories" message lists its whole input: a decision's reason holding it
    outgrew MLflow's tag limit (100,000 characters) and failed the live gate's rejection."""
    unknown = ", ".join(str(120.0 + i / 100) for i in range(20_000))
    text = exception_text(ValueError(f"Found unknown categories [{unknown}] in column 0"))
    assert text.startswith("ValueError: Found unknown categories [120.0, 120.01")
    assert len(text) < PROBLEM_MESSAGE_CHARS + 60 and text.endswith("characters)")
    assert exception_text(KeyError("tempo")) == "KeyError: 'tempo'"
