"""Fit and evaluate pipelines on the held-out split (natural class prior), with bootstrap intervals and plots.

Plain functions on frames and arrays; the flow and the MLflow adapter do the recording.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve

from reggaeton import model
from reggaeton.data import features_array
from reggaeton.metrics import SCORE_METRICS, Interval, bootstrap_interval, evaluate
from reggaeton.schema import TARGET

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Metrics reported with a bootstrap interval.
INTERVAL_METRICS: Final = ("pr_auc", "roc_auc")
# The notebook predicted with ``predict`` (probability >= 0.5); the baseline keeps that threshold.
BASELINE_THRESHOLD: Final = 0.5


def fit_pipeline(family: str, params: Mapping[str, Any], train: pd.DataFrame, seed: int) -> Any:
    """Fit a pipeline of ``family`` on a training frame (features in schema order, as arrays)."""
    pipeline = model.build_pipeline(family, params, seed)
    pipeline.fit(features_array(train), train[TARGET].to_numpy())
    return pipeline


@dataclass(frozen=True)
class Evaluation:
    """A fitted pipeline's held-out probabilities, metrics at its threshold, and bootstrap intervals."""

    name: str
    pipeline: Any
    threshold: float
    proba: np.ndarray
    metrics: dict[str, float]
    intervals: dict[str, Interval]


def evaluate_holdout(
    name: str,
    pipeline: Any,
    holdout: pd.DataFrame,
    threshold: float,
    *,
    rounds: int,
    seed: int,
    confidence: float = 0.95,
) -> Evaluation:
    """Score a fitted pipeline on held-out rows: metrics at ``threshold`` and stratified bootstrap intervals.

    Args:
        name: Label for reports and plots (family or "baseline").
        pipeline: A fitted pipeline taking features in schema order.
        holdout: Held-out rows with the natural class prior.
        threshold: Decision threshold (chosen on validation data, never on these rows).
        rounds: Bootstrap replicates.
        seed: Bootstrap seed.
        confidence: Interval coverage.
    """
    y_true = holdout[TARGET].to_numpy()
    proba = pipeline.predict_proba(features_array(holdout))[:, 1]
    intervals = {
        metric: bootstrap_interval(y_true, proba, SCORE_METRICS[metric], rounds, seed, confidence)
        for metric in INTERVAL_METRICS
    }
    return Evaluation(
        name=name,
        pipeline=pipeline,
        threshold=threshold,
        proba=proba,
        metrics=evaluate(y_true, proba, threshold),
        intervals=intervals,
    )


def metric_record(evaluation: Evaluation, prefix: str = "") -> dict[str, float]:
    """Flat metrics of an evaluation (with ``_low``/``_high`` interval bounds) for a tracking run."""
    record = {f"{prefix}{key}": value for key, value in evaluation.metrics.items()}
    for metric, interval in evaluation.intervals.items():
        record[f"{prefix}{metric}_low"] = interval.low
        record[f"{prefix}{metric}_high"] = interval.high
    record[f"{prefix}threshold"] = evaluation.threshold
    return record


def _new_figure() -> Figure:
    """An empty 6x5 in. figure; matplotlib is imported here, by training runs only (~0.4 s of CPU)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(6, 5))


def pr_curve_figure(y_true: np.ndarray, evaluations: Sequence[Evaluation]) -> Figure:
    """Precision-recall curves of several models on the same held-out rows, with the prior as floor."""
    figure = _new_figure()
    ax = figure.subplots()
    for evaluation in evaluations:
        precision, recall, _ = precision_recall_curve(y_true, evaluation.proba)
        pr_auc = evaluation.metrics["pr_auc"]
        ax.step(recall, precision, where="post", label=f"{evaluation.name} (PR-AUC {pr_auc:.3f})")
    ax.axhline(float(np.mean(y_true)), color="grey", linestyle=":", label="class prior")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, held-out data", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    figure.tight_layout()
    return figure


def calibration_figure(y_true: np.ndarray, evaluations: Sequence[Evaluation], bins: int = 8) -> Figure:
    """Reliability diagram (quantile bins, since positives are rare) of several models."""
    figure = _new_figure()
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for evaluation in evaluations:
        observed, predicted = calibration_curve(y_true, evaluation.proba, n_bins=bins, strategy="quantile")
        brier = evaluation.metrics["brier"]
        ax.plot(predicted, observed, marker="o", label=f"{evaluation.name} (Brier {brier:.4f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title="Calibration, held-out")
    ax.legend(loc="upper left")
    figure.tight_layout()
    return figure


@dataclass(frozen=True)
class Candidates:
    """The tuned model and the baseline, evaluated on the same held-out rows."""

    tuned: Evaluation
    baseline: Evaluation
