"""Metrics that mean something under a 3 % class prior, thresholds and bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

Metric = Callable[[np.ndarray, np.ndarray], float]

# Threshold-free metrics on probabilities; "higher is better" except the Brier score.
SCORE_METRICS: dict[str, Metric] = {
    "pr_auc": average_precision_score,
    "roc_auc": roc_auc_score,
    "brier": brier_score_loss,
}


def evaluate(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """PR-AUC, ROC-AUC, Brier, and F1/precision/recall and the confusion matrix at ``threshold``."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    predicted = (proba >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    return {
        "pr_auc": float(average_precision_score(y_true, proba)),
        "roc_auc": float(roc_auc_score(y_true, proba)),
        "brier": float(brier_score_loss(y_true, proba)),
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
        "precision": float(precision_score(y_true, predicted, zero_division=0)),
        "recall": float(recall_score(y_true, predicted, zero_division=0)),
        "tn": float(tn),
        "fp": float(fp),
        "fn": float(fn),
        "tp": float(tp),
    }


def best_f1_threshold(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The probability threshold that maximises F1 on (validation) data."""
    precision, recall, thresholds = precision_recall_curve(y_true, proba)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )
    # precision/recall have one more entry than thresholds (the final point has no threshold).
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap percentile interval."""

    estimate: float
    low: float
    high: float


def _stratified_indices(y_true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Resample within each class so every replicate keeps both classes (rare positives).
    parts = [
        rng.choice(idx, size=len(idx), replace=True) for idx in (np.flatnonzero(y_true == c) for c in (0, 1))
    ]
    return np.concatenate(parts)


def bootstrap_interval(
    y_true: np.ndarray, proba: np.ndarray, metric: Metric, rounds: int, seed: int, confidence: float = 0.95
) -> Interval:
    """Stratified bootstrap percentile interval of a metric."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    rng = np.random.default_rng(seed)
    values = np.empty(rounds)
    for i in range(rounds):
        idx = _stratified_indices(y_true, rng)
        values[i] = metric(y_true[idx], proba[idx])
    alpha = (1 - confidence) / 2
    return Interval(
        float(metric(y_true, proba)), float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
    )


def paired_bootstrap_difference(
    y_true: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    metric: Metric,
    rounds: int,
    seed: int,
    confidence: float = 0.95,
) -> Interval:
    """Interval of ``metric(b) - metric(a)`` with both scored on the same resampled rows."""
    y_true = np.asarray(y_true)
    proba_a = np.asarray(proba_a, dtype=float)
    proba_b = np.asarray(proba_b, dtype=float)
    rng = np.random.default_rng(seed)
    diffs = np.empty(rounds)
    for i in range(rounds):
        idx = _stratified_indices(y_true, rng)
        diffs[i] = metric(y_true[idx], proba_b[idx]) - metric(y_true[idx], proba_a[idx])
    alpha = (1 - confidence) / 2
    estimate = metric(y_true, proba_b) - metric(y_true, proba_a)
    return Interval(float(estimate), float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)))
