"""The rebuilt scorer reproduces every model family the project trains; anything else is left alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler

from reggaeton import scorer as scorer_module
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.model import FAMILIES, IMBALANCE, IMBALANCE_CHOICES, build_pipeline
from reggaeton.schema import TARGET
from reggaeton.scorer import PIPELINE, REBUILT, TOLERANCE, choose_scorer, verification_rows
from reggaeton.servable import examples_array

_DATA = split(synthetic_dataset(600, seed=5), 0.3, seed=5)
_TRAIN = features_array(_DATA.train)
_HOLDOUT = features_array(_DATA.holdout)
_SMALL = {"hist_gradient_boosting": {"max_iter": 30}, "random_forest": {"n_estimators": 20}, "baseline": {}}


def _fitted(model: Any) -> Any:
    return model.fit(_TRAIN, _DATA.train[TARGET])


def _families() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = [("baseline", {"n_estimators": 50})]
    for family in FAMILIES:
        if family != "baseline":
            cases += [(family, {**_SMALL.get(family, {}), IMBALANCE: choice}) for choice in IMBALANCE_CHOICES]
    return cases


@pytest.mark.parametrize(("family", "params"), _families())
def test_every_family_is_rebuilt_and_reproduces_the_pipeline(family: str, params: dict[str, Any]) -> None:
    pipeline = _fitted(build_pipeline(family, params, seed=0))
    scorer = choose_scorer(pipeline, verification_rows(examples_array()))
    assert scorer.kind == REBUILT
    # One song, a micro-batch, many, and more than a walk's block of rows (the last block partial).
    for rows in (_HOLDOUT[:1], _HOLDOUT[:14], _HOLDOUT, np.resize(_HOLDOUT, (2_500, _HOLDOUT.shape[1]))):
        expected = pipeline.predict_proba(rows)[:, 1]
        np.testing.assert_allclose(scorer.probabilities(rows), expected, rtol=0, atol=TOLERANCE)


def _refuse(*_: Any) -> Any:
    raise AssertionError("the final estimator's own predict_proba was called")


def _transformed(pipeline: Any, rows: np.ndarray) -> np.ndarray:
    """``rows`` through the pipeline's steps before the final estimator (resamplers do nothing here)."""
    for _, step in pipeline.steps[:-1]:
        if not hasattr(step, "fit_resample"):
            rows = step.transform(rows)
    return np.asarray(rows)


@pytest.mark.parametrize(
    "family", ["baseline", "hist_gradient_boosting", "random_forest", "logistic_regression"]
)
def test_the_final_estimator_is_rebuilt_not_called(family: str) -> None:
    pipeline = _fitted(build_pipeline(family, _SMALL.get(family, {}), seed=0))
    final = pipeline[-1]
    rows = _transformed(pipeline, _HOLDOUT[:14])
    expected = final.predict_proba(rows)[:, 1]
    final.predict_proba = _refuse  # shadows the method: the rebuilt estimator must not use it
    estimator = scorer_module._estimator(final)
    np.testing.assert_allclose(estimator(rows), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", ["baseline", "hist_gradient_boosting", "random_forest"])
def test_rows_exactly_on_split_thresholds_go_where_scikit_learn_sends_them(family: str) -> None:
    # A value equal to a split threshold goes left (<=); boosted trees compare float32 inputs.
    pipeline = _fitted(build_pipeline(family, _SMALL.get(family, {}), seed=0))
    final = pipeline[-1]
    rng = np.random.default_rng(4)
    rows = _transformed(pipeline, np.repeat(_HOLDOUT[:1], 300, axis=0))
    for column, values in _split_thresholds(final).items():
        if values:  # every row sits exactly on one of this feature's thresholds (or the next float32)
            rows[:, column] = rng.choice(values, size=len(rows))
    expected = final.predict_proba(rows)[:, 1]
    final.predict_proba = _refuse
    np.testing.assert_allclose(scorer_module._estimator(final)(rows), expected, rtol=0, atol=TOLERANCE)


def _split_thresholds(final: Any) -> dict[int, list[float]]:
    """Every split threshold of a fitted tree ensemble, per feature, as float64 inputs hitting it exactly."""
    found: dict[int, list[float]] = {column: [] for column in range(final.n_features_in_)}
    if hasattr(final, "_predictors"):
        for (predictor,) in final._predictors:
            nodes = predictor.nodes[predictor.nodes["is_leaf"] == 0]
            for feature, threshold in zip(nodes["feature_idx"], nodes["num_threshold"], strict=True):
                found[int(feature)].append(float(threshold))
        return found
    trees = final.estimators_[:, 0] if isinstance(final.estimators_, np.ndarray) else final.estimators_
    for tree in trees:
        inner = tree.tree_.children_left != -1
        for feature, threshold in zip(tree.tree_.feature[inner], tree.tree_.threshold[inner], strict=True):
            # Inputs are cast to float32 first: the threshold itself (a float64 midpoint that rounds to
            # one side) and the float32 values around it.
            nearest = np.float32(threshold)
            around = [
                np.nextafter(nearest, np.float32(-np.inf)),
                nearest,
                np.nextafter(nearest, np.float32(np.inf)),
            ]
            found[int(feature)] += [float(threshold), *(float(value) for value in around)]
    return found


def test_a_column_transformer_with_every_kind_of_column_is_rebuilt() -> None:
    columns = ColumnTransformer(
        [
            ("minmax", MinMaxScaler(clip=True), [5, 6]),
            (
                "standard",
                StandardScaler(with_mean=False),
                np.array([True, False, False, False, False, False, False]),
            ),
            ("dropped", "drop", [1]),
        ],
        remainder="passthrough",
    )
    pipeline = _fitted(Pipeline([("columns", columns), ("model", LogisticRegression())]))
    scorer = choose_scorer(pipeline, verification_rows(examples_array()))
    assert scorer.kind == REBUILT
    # Out of the training range, where clipping matters.
    rows = verification_rows(examples_array(), rows=200, seed=9)
    np.testing.assert_allclose(
        scorer.probabilities(rows), pipeline.predict_proba(rows)[:, 1], rtol=0, atol=TOLERANCE
    )


def test_a_step_it_does_not_know_leaves_the_pipeline_as_is() -> None:
    pipeline = _fitted(
        Pipeline([("square", FunctionTransformer(np.square)), ("model", LogisticRegression(max_iter=5000))])
    )
    scorer = choose_scorer(pipeline, verification_rows(examples_array()))
    assert scorer.kind == PIPELINE
    np.testing.assert_array_equal(scorer.probabilities(_HOLDOUT), pipeline.predict_proba(_HOLDOUT)[:, 1])


class _Jittery(LogisticRegression):
    """A classifier whose probabilities move a little from call to call (not reproducible)."""

    def predict_proba(self, X: Any) -> Any:
        proba = super().predict_proba(X)
        shift = np.random.default_rng().uniform(1e-6, 1e-5)
        return np.column_stack([proba[:, 0] - shift, proba[:, 1] + shift])


def test_a_rebuilt_scorer_that_does_not_reproduce_the_pipeline_is_not_used() -> None:
    pipeline = _fitted(Pipeline([("scale", StandardScaler()), ("model", _Jittery())]))
    assert choose_scorer(pipeline, verification_rows(examples_array())).kind == PIPELINE


def test_verification_rows_cover_the_schema_ranges() -> None:
    rows = verification_rows(examples_array())
    assert len(rows) > 500
    assert rows[:, 5].max() > 250 and rows[:, 6].min() < -50  # tempo and loudness across their ranges
