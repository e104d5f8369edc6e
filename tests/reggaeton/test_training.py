"""Fitting, held-out evaluation with bootstrap intervals, and the plots."""

from __future__ import annotations

import numpy as np
import pytest

from reggaeton.data import split, synthetic_dataset
from reggaeton.model import BASELINE, HIST_GRADIENT_BOOSTING, IMBALANCE
from reggaeton.schema import TARGET
from reggaeton.training import (
    calibration_figure,
    evaluate_holdout,
    fit_pipeline,
    metric_record,
    pr_curve_figure,
)


@pytest.fixture(scope="module")
def evaluations():  # type: ignore[no-untyped-def]
    parts = split(synthetic_dataset(1500, seed=2), 0.3, seed=2)
    tuned = fit_pipeline(HIST_GRADIENT_BOOSTING, {"max_iter": 60, IMBALANCE: "class_weight"}, parts.train, 0)
    baseline = fit_pipeline(BASELINE, {"n_estimators": 50}, parts.train, 0)
    return parts, [
        evaluate_holdout("tuned", tuned, parts.holdout, 0.4, rounds=200, seed=1),
        evaluate_holdout(BASELINE, baseline, parts.holdout, 0.5, rounds=200, seed=1),
    ]


def test_holdout_metrics_and_intervals(evaluations) -> None:  # type: ignore[no-untyped-def]
    parts, (tuned, _baseline) = evaluations
    y = parts.holdout[TARGET].to_numpy()
    assert tuned.proba.shape == y.shape
    # The confusion matrix covers every held-out row, at the natural prior.
    m = tuned.metrics
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == len(y)
    assert m["tp"] + m["fn"] == y.sum()
    assert m["pr_auc"] > y.mean()  # better than the prior
    for name in ("pr_auc", "roc_auc"):
        interval = tuned.intervals[name]
        assert interval.low <= interval.estimate <= interval.high
        assert interval.high - interval.low > 0
    record = metric_record(tuned, "x_")
    assert record["x_pr_auc_low"] == tuned.intervals["pr_auc"].low
    assert record["x_threshold"] == 0.4


def test_bootstrap_is_seeded(evaluations) -> None:  # type: ignore[no-untyped-def]
    parts, (tuned, _baseline) = evaluations
    again = evaluate_holdout("tuned", tuned.pipeline, parts.holdout, 0.4, rounds=200, seed=1)
    other = evaluate_holdout("tuned", tuned.pipeline, parts.holdout, 0.4, rounds=200, seed=2)
    assert again.intervals == tuned.intervals
    assert other.intervals != tuned.intervals


def test_plots_draw_one_curve_per_model(evaluations) -> None:  # type: ignore[no-untyped-def]
    parts, models = evaluations
    y = parts.holdout[TARGET].to_numpy()
    pr = pr_curve_figure(y, models)
    calibration = calibration_figure(y, models)
    # One line per model plus the reference line (prior, or perfect calibration).
    assert len(pr.axes[0].get_lines()) == len(models) + 1
    assert len(calibration.axes[0].get_lines()) == len(models) + 1
    labels = [text.get_text() for text in pr.axes[0].get_legend().get_texts()]
    assert any(label.startswith("tuned (PR-AUC") for label in labels)
    for line in calibration.axes[0].get_lines()[1:]:
        assert np.all((np.asarray(line.get_ydata()) >= 0) & (np.asarray(line.get_ydata()) <= 1))
