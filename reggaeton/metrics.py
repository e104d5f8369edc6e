"""Metrics that mean something under a 3 % class prior, thresholds and bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
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


def _average_precision_resampled(y_true: np.ndarray, proba: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Average precision of each resample (a row of ``rows``: indices), scikit-learn's definition.

    Ties are scored as one threshold: each positive counts with the precision at the end of its group
    of tied scores. The rows are sorted by score once; a resample is how many times it draws each row,
    so its precision at a position is a cumulative sum in that order (no sort per resample), needed
    only where the positives' groups end.
    """
    size, count = rows.shape
    order = np.argsort(-proba, kind="stable")
    rank = np.empty(count, dtype=np.intp)
    rank[order] = np.arange(count)
    scores = proba[order]
    offsets = (np.arange(size) * count)[:, None]
    draws = np.bincount((rank[rows] + offsets).ravel(), minlength=size * count).reshape(size, count)
    positive = np.flatnonzero(y_true[order])  # sorted positions of the positives
    if not len(positive):
        return np.full(size, np.nan)  # undefined without a positive, as scikit-learn warns
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    group_end = ends[np.searchsorted(ends, positive)]  # where each positive's group of ties ends
    drawn = np.cumsum(draws, axis=1)[:, group_end]
    positive_draws = draws[:, positive]
    true_positives = np.cumsum(positive_draws, axis=1)
    at_end = true_positives[:, np.searchsorted(positive, group_end, side="right") - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = at_end / drawn
    contributions = np.where(positive_draws > 0, positive_draws * precision, 0.0)
    return np.sum(contributions, axis=1) / true_positives[:, -1]


def _roc_auc_rows(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row as the Mann-Whitney statistic (ties count one half, as scikit-learn's)."""
    ranks = rankdata(proba, axis=1)
    positives = np.sum(y_true, axis=1)
    negatives = proba.shape[1] - positives
    return (np.sum(ranks * y_true, axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def _brier_rows(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    return np.mean((proba - y_true) ** 2, axis=1)


Resampled = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _gathered(rowwise: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Resampled:
    """A metric of each row of gathered arrays, as a metric of each resample's indices."""

    def resampled(y_true: np.ndarray, proba: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return rowwise(y_true[rows], proba[rows])

    return resampled


# The interval metrics computed for all bootstrap replicates at once (``rows``: one resample's indices
# per row): 1,000 replicates of three metrics took ~10 s as scikit-learn calls, most of it input
# validation. Equal to them within floating-point rounding (tests/reggaeton/test_metrics.py).
_ROWWISE: dict[Metric, Resampled] = {
    average_precision_score: _average_precision_resampled,
    roc_auc_score: _gathered(_roc_auc_rows),
    brier_score_loss: _gathered(_brier_rows),
}


# Resampled rows are scored in blocks of about this many cells (replicates x rows): a few tens of MB
# per array, whatever the rows and rounds (2,000 replicates of 13,000 rows at once took ~1.5 GB).
_BLOCK_CELLS = 2_000_000


def _replicates(
    y_true: np.ndarray, probas: tuple[np.ndarray, ...], metric: Metric, rounds: int, seed: int
) -> list[np.ndarray]:
    """``metric`` on ``rounds`` stratified resamples (the same rows for every array in ``probas``)."""
    rng = np.random.default_rng(seed)
    rowwise = _ROWWISE.get(metric)
    values = [np.empty(rounds) for _ in probas]
    block = max(1, _BLOCK_CELLS // max(1, len(y_true)))
    for start in range(0, rounds, block):
        stop = min(rounds, start + block)
        # Drawn replicate by replicate, in order: the same resamples whatever the block size.
        rows = np.stack([_stratified_indices(y_true, rng) for _ in range(start, stop)])
        if rowwise is not None:
            for out, proba in zip(values, probas, strict=True):
                out[start:stop] = rowwise(y_true, proba, rows)
        else:
            for out, proba in zip(values, probas, strict=True):
                out[start:stop] = [metric(y_true[idx], proba[idx]) for idx in rows]
    return values


def bootstrap_interval(
    y_true: np.ndarray, proba: np.ndarray, metric: Metric, rounds: int, seed: int, confidence: float = 0.95
) -> Interval:
    """Stratified bootstrap percentile interval of a metric."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    (values,) = _replicates(y_true, (proba,), metric, rounds, seed)
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
    return mean_difference_interval(y_true, (proba_a,), (proba_b,), metric, rounds, seed, confidence)


def mean_difference_interval(
    y_true: np.ndarray,
    probas_a: Sequence[np.ndarray],
    probas_b: Sequence[np.ndarray],
    metric: Metric,
    rounds: int,
    seed: int,
    confidence: float = 0.95,
) -> Interval:
    """Interval of the mean ``metric`` of models ``b`` minus that of models ``a``, all on the same rows.

    For several runs of two procedures (each run's model) scored on one held-out set. Each replicate
    resamples the rows (the same rows for every model: paired) and, on each side, the runs, so the
    interval holds the rows' noise and the spread between runs. With one model a side it is
    ``paired_bootstrap_difference``.
    """
    if not probas_a or not probas_b:
        raise ValueError("each side needs at least one model's probabilities")
    y_true = np.asarray(y_true)
    probas = tuple(np.asarray(proba, dtype=float) for proba in (*probas_a, *probas_b))
    values = np.stack(_replicates(y_true, probas, metric, rounds, seed))  # (models, rounds)
    runs = np.random.default_rng([seed, 1])
    replicate = np.arange(rounds)[:, None]

    def resampled_mean(side: np.ndarray) -> np.ndarray:
        picks = runs.integers(0, len(side), size=(rounds, len(side)))
        return np.mean(side.T[replicate, picks], axis=1)

    split = len(probas_a)
    diffs = resampled_mean(values[split:]) - resampled_mean(values[:split])
    alpha = (1 - confidence) / 2
    scores = [metric(y_true, proba) for proba in probas]
    estimate = float(np.mean(scores[split:]) - np.mean(scores[:split]))
    return Interval(estimate, float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)))
