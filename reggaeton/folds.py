"""Cross-validation folds computed once per study, with the per-fold work no trial parameter changes.

Every trial of a study scores its pipeline on the same stratified folds. The steps before the
estimator (feature scaling, SMOTE with the study's seed) depend only on the fold and on which steps a
pipeline has, never on the estimator's hyper-parameters, so their output is computed once per fold
and step list and shared by the trials (threads) that need it. The estimator then sees exactly the
arrays the full pipeline would hand it, so the scores equal those of ``pipeline.fit`` on the fold.

One estimator-specific step is shared too: histogram gradient boosting with class weights computes its
bin edges as weighted percentiles, 254 per feature, which is most of a fit on data this small (~2 s of
~2.2 s). The edges depend only on the fold's rows and the class weights, so ``for_estimator`` bins
each fold once and hands the estimator the bin indices: it re-bins them into the same bins (fewer than
255 distinct values: midpoints), and grows the same trees.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
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
        key = (fold, repr(list(steps)))
        with self._lock:
            found = self._prepared.get(key)
        if found is not None:
            return found
        train_idx, valid_idx = self.splits[fold]
        prepared = _apply(steps, self.X[train_idx], self.y[train_idx], self.X[valid_idx])
        with self._lock:
            return self._prepared.setdefault(key, prepared)

    def for_estimator(self, fold: int, steps: Steps, estimator: Any) -> Prepared:
        """``prepared(fold, steps)`` as ``estimator`` should see it: pre-binned when that saves its fit time.

        Only histogram gradient boosting with class weights on data without missing values is
        pre-binned (see the module docstring); every other estimator gets the prepared arrays.
        """
        prepared = self.prepared(fold, steps)
        if not _bins_by_weight(estimator, prepared):
            return prepared
        key = (fold, f"{steps!r} binned {estimator.class_weight!r} {estimator.max_bins}")
        with self._lock:
            found = self._prepared.get(key)
        if found is not None:
            return found
        binned = _binned(estimator, *prepared)
        with self._lock:
            return self._prepared.setdefault(key, binned)

    def valid_target(self, fold: int) -> np.ndarray:
        """The validation fold's target."""
        return self.y[self.splits[fold][1]]


def _bins_by_weight(estimator: Any, prepared: Prepared) -> bool:
    """Whether the estimator would bin these arrays with weighted percentiles, none of them missing."""
    X_fit, _, X_valid = prepared
    return (
        isinstance(estimator, HistGradientBoostingClassifier)
        and estimator.class_weight is not None
        and estimator.categorical_features in (None, "from_dtype")
        and len(X_fit) <= _BinMapper().subsample  # the binner subsamples larger data at random
        and not (np.isnan(X_fit).any() or np.isnan(X_valid).any())
    )


def _binned(
    estimator: HistGradientBoostingClassifier, X_fit: np.ndarray, y_fit: np.ndarray, X_valid: np.ndarray
) -> Prepared:
    """The fold's features as the estimator's own weighted bin indices (as floats)."""
    weights = compute_sample_weight(estimator.class_weight, y_fit)
    mapper = _BinMapper(n_bins=estimator.max_bins + 1, n_threads=1).fit(X_fit, sample_weight=weights)
    as_float = np.float64
    return mapper.transform(X_fit).astype(as_float), y_fit, mapper.transform(X_valid).astype(as_float)
