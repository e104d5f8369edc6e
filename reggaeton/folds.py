"""Cross-validation folds computed once per study, with the per-fold work no trial parameter changes.

Every trial of a study scores its pipeline on the same stratified folds. The steps before the
estimator (feature scaling, SMOTE with the study's seed) depend only on the fold and on which steps a
pipeline has, never on the estimator's hyper-parameters, so their output is computed once per fold
and step list and shared by the trials (threads) that need it. The estimator then sees exactly the
arrays the full pipeline would hand it, so the scores equal those of ``pipeline.fit`` on the fold.

One estimator-specific step is shared too: histogram gradient boosting with class weights computes its
bin edges as weighted percentiles, 254 per feature, which is most of a fit on data this small (~1.5 s
of ~1.7 s per fold on the original data). The edges depend only on the fold's rows and the class
weights, so ``for_estimator`` bins each fold once and hands the estimator the bin indices: it re-bins
them into the same bins (fewer than 255 distinct values: midpoints), and grows the same trees.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier

# The only private scikit-learn name used here: the binner the estimator itself runs (the folds test
# checks the scores against a full pipeline fit, for every family and imbalance option).
from sklearn.ensemble._hist_gradient_boosting.binning import _BinMapper
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.utils.class_weight import compute_sample_weight

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


def _binned(
    estimator: HistGradientBoostingClassifier, X_fit: np.ndarray, y_fit: np.ndarray, X_valid: np.ndarray
) -> Prepared:
    """The fold's features as the estimator's own weighted bin indices (as floats).

    Data the binner would treat differently (missing values, or more rows than it subsamples to at
    random) is returned as it is: the estimator bins it itself, as in the whole pipeline.
    """
    mapper = _BinMapper(n_bins=estimator.max_bins + 1, n_threads=1)
    if len(X_fit) > mapper.subsample or np.isnan(X_fit).any() or np.isnan(X_valid).any():
        return X_fit, y_fit, X_valid
    mapper.fit(X_fit, sample_weight=compute_sample_weight(estimator.class_weight, y_fit))
    return mapper.transform(X_fit).astype(np.float64), y_fit, mapper.transform(X_valid).astype(np.float64)
