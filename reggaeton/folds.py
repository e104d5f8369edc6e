"""Cross-validation folds computed once per study, with the per-fold work no trial parameter changes.

Every trial of a study scores its pipeline on the same stratified folds. The steps before the
estimator (feature scaling, SMOTE with the study's seed) depend only on the fold and on which steps a
pipeline has, never on the estimator's hyper-parameters, so their output is computed once per fold
and step list and shared by the trials (threads) that need it. The estimator then sees exactly the
arrays the full pipeline would hand it, so the scores equal those of ``pipeline.fit`` on the fold.

One estimator-specific step is shared too: histogram gradient boosting with class weights computes its
bin edges as weighted percentiles, 254 per feature, one call each, which is most of a fit on data this
small (~1.5 s of ~1.7 s per fold on the original data). The edges depend only on the fold's rows and
the class weights, so ``for_estimator`` bins each fold once and hands the estimator the bin indices: it
re-bins them into the same bins (fewer than 255 distinct values: midpoints), and grows the same trees.
The edges are computed as the estimator computes them, with scikit-learn's own weighted percentile,
but for all percentiles and features in one call: 0.09 s instead of 0.9 s per fold, the same edges.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.utils.class_weight import compute_sample_weight

# The only private scikit-learn name used here: the weighted percentile the estimator's binner calls (the
# folds test checks the scores against a full pipeline fit, for every family and imbalance option).
from sklearn.utils.stats import _weighted_percentile

Steps = Sequence[tuple[str, Any]]
# Training features, training target, validation features.
Prepared = tuple[np.ndarray, np.ndarray, np.ndarray]


def _apply(steps: Steps, X_fit: np.ndarray, y_fit: np.ndarray, X_valid: np.ndarray) -> Prepared:
    """Fit the steps on the training fold as a pipeline does: samplers resample it, transformers map both."""
    for _, step in steps:
        fitted = clone(step)
        if hasattr(fitted, "fit_resample"):
            X_fit, y_fit = fitted.fit_resample(X_fit, y_fit)
        else:
            X_fit = fitted.fit_transform(X_fit, y_fit)
            X_valid = fitted.transform(X_valid)
    return X_fit, y_fit, X_valid


class Folds:
    """Stratified repeated k-fold splits of one training set, and their prepared arrays (thread-safe)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, *, folds: int, repeats: int, seed: int) -> None:
        self.X = np.asarray(X)
        self.y = np.asarray(y)
        self.repeats = repeats
        cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
        self.splits: tuple[tuple[np.ndarray, np.ndarray], ...] = tuple(cv.split(self.X, self.y))
        self._prepared: dict[tuple[int, str], Prepared] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.splits)

    def prepared(self, fold: int, steps: Steps) -> Prepared:
        """Training features and target, and validation features, of ``fold`` after ``steps``.

        Args:
            fold: Index into ``splits``.
            steps: A pipeline's steps before its estimator (``(name, unfitted step)`` pairs); their
                representation, which includes their parameters and seeds, is the cache key.
        """
        train_idx, valid_idx = self.splits[fold]
        return self._cached(
            (fold, repr(list(steps))),
            lambda: _apply(steps, self.X[train_idx], self.y[train_idx], self.X[valid_idx]),
        )

    def for_estimator(self, fold: int, steps: Steps, estimator: Any) -> Prepared:
        """``prepared(fold, steps)`` as ``estimator`` should see it: pre-binned when that saves its fit time.

        Only histogram gradient boosting with class weights on data without missing values is
        pre-binned (see the module docstring); every other estimator gets the prepared arrays.
        """
        if not _weighted_binning(estimator):
            return self.prepared(fold, steps)
        return self._cached(
            (fold, f"{steps!r} binned {estimator.class_weight!r} {estimator.max_bins}"),
            lambda: _binned(estimator, *self.prepared(fold, steps)),
        )

    def _cached(self, key: tuple[int, str], compute: Callable[[], Prepared]) -> Prepared:
        """The arrays stored under ``key``, computed outside the lock the first time (first one kept)."""
        with self._lock:
            found = self._prepared.get(key)
        if found is not None:
            return found
        computed = compute()
        with self._lock:
            return self._prepared.setdefault(key, computed)

    def valid_target(self, fold: int) -> np.ndarray:
        """The validation fold's target."""
        return self.y[self.splits[fold][1]]


def _weighted_binning(estimator: Any) -> bool:
    """Whether the estimator bins its training data with weighted percentiles (class weights)."""
    return (
        isinstance(estimator, HistGradientBoostingClassifier)
        and estimator.class_weight is not None
        and estimator.categorical_features in (None, "from_dtype")
    )


# Histogram gradient boosting computes its bin edges on a random subsample above this many rows; such
# data is left for the estimator to bin itself.
BINNING_SUBSAMPLE = 200_000


def _bin_edges(X: np.ndarray, sample_weight: np.ndarray, max_bins: int) -> list[np.ndarray]:
    """Each feature's bin edges as the estimator's binner computes them with these weights.

    Midpoints of the distinct values when there are at most ``max_bins`` of them; otherwise the
    distinct weighted percentiles ("averaged inverted CDF") at ``max_bins - 1`` equally spaced ranks.
    """
    ranks = np.linspace(0, 100, num=max_bins + 1)[1:-1]
    percentiles = np.atleast_2d(_weighted_percentile(X, sample_weight, ranks, average=True))
    edges = []
    for feature in range(X.shape[1]):
        distinct = np.unique(X[:, feature])
        if len(distinct) == 1:
            found = np.asarray([], dtype=np.float64)
        elif len(distinct) <= max_bins:
            found = np.lib.stride_tricks.sliding_window_view(distinct, 2).mean(axis=1)
        else:
            found = np.unique(percentiles[feature])
        edges.append(np.clip(found, None, np.finfo(np.float64).max))
    return edges


def _binned(
    estimator: HistGradientBoostingClassifier, X_fit: np.ndarray, y_fit: np.ndarray, X_valid: np.ndarray
) -> Prepared:
    """The fold's features as the estimator's own weighted bin indices (as floats).

    Data the binner would treat differently (missing values, or more rows than it subsamples to at
    random) is returned as it is: the estimator bins it itself, as in the whole pipeline.
    """
    if len(X_fit) > BINNING_SUBSAMPLE or np.isnan(X_fit).any() or np.isnan(X_valid).any():
        return X_fit, y_fit, X_valid
    weights = compute_sample_weight(estimator.class_weight, y_fit)
    edges = _bin_edges(np.asarray(X_fit, dtype=np.float64), weights, estimator.max_bins)

    def to_bins(X: np.ndarray) -> np.ndarray:
        # Bin i holds the values in (edges[i - 1], edges[i]], as the estimator maps them.
        columns = [np.searchsorted(edge, X[:, feature], side="left") for feature, edge in enumerate(edges)]
        return np.column_stack(columns).astype(np.float64)

    return to_bins(X_fit), y_fit, to_bins(X_valid)
