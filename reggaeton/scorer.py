"""A cheaper call of the served pipeline, used only after it reproduces the pipeline's probabilities.

For a small batch, most of ``pipeline.predict_proba`` is per-call bookkeeping, not arithmetic: on the
data scientist's baseline (min-max scaling of two columns, then 300 boosted trees) a 14-row call takes
about 850 us, of which the ``ColumnTransformer`` is 400 us, the pipeline's own checks 160 us and the
trees' ``predict_proba`` 290 us; a tuned histogram gradient boosting of 200 iterations makes one Python
call per tree, 1.8 ms for 16 rows. This module rebuilds what the project's pipelines use:

- transforming steps (``MinMaxScaler``, ``StandardScaler``, a ``ColumnTransformer`` of those on integer
  columns; resamplers such as SMOTE do nothing at prediction time) as numpy operations, in the order
  scikit-learn applies them;
- tree ensembles (gradient boosting, histogram gradient boosting, random forest; binary, numeric
  splits) as one flat array of nodes walked for every tree and row at once (:class:`Forest`);
- logistic regression as its linear function; any other final estimator keeps its ``predict_proba``.

Anything else (another step type, options it does not rebuild) means no rebuilt scorer: the
pipeline serves as is. A rebuilt scorer is used only if, on a verification sample (the challenge's
example songs plus rows spread over every feature's schema range), its probabilities match the
pipeline's to ``TOLERANCE``: the check, not this code, is the guarantee, so a future scikit-learn
that changes these steps (some attributes read here are private) falls back to the pipeline instead of
serving different predictions.

Every rebuilt piece is a small picklable object of numpy arrays, and scikit-learn is imported only to
rebuild: a rebuilt scorer saved by the server's model cache loads, and serves, without importing
scikit-learn (an API replica starts faster).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import numpy as np

from reggaeton.schema import FEATURES

logger = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], np.ndarray]
Probabilities = Callable[[np.ndarray], np.ndarray]  # (n, 7) float array -> (n,) positive-class probability

TOLERANCE: Final = 1e-9
VERIFICATION_ROWS: Final = 512
ScorerKind = Literal["rebuilt", "pipeline"]
PIPELINE: Final[ScorerKind] = "pipeline"
REBUILT: Final[ScorerKind] = "rebuilt"


@dataclass(frozen=True)
class Scorer:
    """How a served model is called: ``kind`` is ``REBUILT`` or ``PIPELINE``."""

    probabilities: Probabilities
    kind: ScorerKind


def pipeline_scorer(model: Any) -> Scorer:
    """The model's own ``predict_proba``, positive class."""
    return Scorer(OwnPredictProba(model), PIPELINE)


def expit(x: np.ndarray) -> np.ndarray:
    """The logistic function, as ``scipy.special.expit`` (without importing SciPy at start-up)."""
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x: 1 / inf is 0
        return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True, eq=False)
class OwnPredictProba:
    """A model's own ``predict_proba``, positive class."""

    model: Any

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(features)[:, 1], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Chain:
    """A rebuilt pipeline: its transforming steps in order, then its final estimator."""

    transforms: tuple[Transform, ...]
    estimator: Probabilities

    def __call__(self, features: np.ndarray) -> np.ndarray:
        for transform in self.transforms:
            features = transform(features)
        return self.estimator(features)


def verification_rows(examples: np.ndarray, rows: int = VERIFICATION_ROWS, seed: int = 0) -> np.ndarray:
    """``examples`` plus ``rows`` songs drawn uniformly within every feature's schema range."""
    rng = np.random.default_rng(seed)
    low = np.array([feature.minimum for feature in FEATURES])
    high = np.array([feature.maximum for feature in FEATURES])
    return np.vstack([examples, low + rng.random((rows, len(FEATURES))) * (high - low)])


def choose_scorer(model: Any, check_rows: np.ndarray) -> Scorer:
    """The rebuilt scorer if there is one and it matches the model on ``check_rows``, else the pipeline's."""
    fallback = pipeline_scorer(model)
    try:
        rebuilt = rebuild(model)
        got = None if rebuilt is None else rebuilt(check_rows)
    except Exception:
        logger.exception("rebuilding the scorer failed; serving the pipeline")
        return fallback
    if rebuilt is None or got is None:
        return fallback
    try:
        expected = fallback.probabilities(check_rows)
    except Exception:  # the pipeline itself cannot score: the smoke check will say so
        logger.exception("the pipeline cannot score the verification rows")
        return fallback
    if got.shape == expected.shape and np.allclose(got, expected, rtol=0.0, atol=TOLERANCE, equal_nan=True):
        return Scorer(rebuilt, REBUILT)
    worst = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("nan")
    logger.warning("rebuilt scorer differs from the pipeline (max |diff| %.3g); serving the pipeline", worst)
    return fallback


def rebuild(model: Any) -> Probabilities | None:
    """The pipeline's steps as numpy operations and its final estimator rebuilt where its type is known
    (else its own ``predict_proba``), or None if a transforming step is not rebuilt."""
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):  # imbalanced-learn's Pipeline is a subclass
        return None
    *steps, (_, final) = model.steps
    transforms: list[Transform] = []
    for _, step in steps:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue  # resamplers only act during fit
        transform = _transform(step)
        if transform is None:
            return None
        transforms.append(transform)
    if not hasattr(final, "predict_proba") or len(getattr(final, "classes_", ())) != 2:
        return None
    return Chain(tuple(transforms), _estimator(final))


def _estimator(final: Any) -> Probabilities:
    """The final estimator's positive-class probability, rebuilt when its type is known."""
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression

    kind = type(final)
    if kind is GradientBoostingClassifier:
        return _gradient_boosting(final) or OwnPredictProba(final)
    if kind is HistGradientBoostingClassifier:
        return _hist_gradient_boosting(final) or OwnPredictProba(final)
    if kind is RandomForestClassifier:
        return _random_forest(final) or OwnPredictProba(final)
    if kind is LogisticRegression:
        return Linear(final.coef_.T, final.intercept_)
    return OwnPredictProba(final)


@dataclass(frozen=True, eq=False)
class Linear:
    """Logistic regression: the logistic function of a linear function."""

    coef: np.ndarray
    intercept: np.ndarray

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(expit(features @ self.coef + self.intercept), dtype=np.float64).ravel()


class Tree(NamedTuple):
    """One fitted tree: per-node arrays (ids local to the tree) and its depth."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    depth: int


# Nodes (rows x trees) walked at once, so the walk's arrays stay in the core's cache. On the baseline's
# 300 trees (2026-12-07, this machine): 3.5 us a row in blocks of 109 rows, 4.4 in one of 512, 9.4 in
# one of 4,096.
_BLOCK_NODES: Final = 32_768


@dataclass(frozen=True)
class Forest:
    """Every tree of an ensemble in flat arrays, walked for all trees and all rows at once.

    Node ``i`` goes to ``children[2 * i]`` when ``x[feature[i]] <= threshold[i]`` (scikit-learn's rule),
    else to ``children[2 * i + 1]``; a leaf is its own child, so ``depth`` steps reach every leaf.
    """

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    children: np.ndarray
    value: np.ndarray
    depth: int

    @classmethod
    def of(cls, trees: list[Tree]) -> Forest:
        """All ``trees`` in one set of arrays (node ids made global)."""
        sizes = [len(tree.feature) for tree in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        shift = np.repeat(offsets, sizes)
        feature, threshold, left, right, is_leaf, value = (
            np.concatenate([getattr(tree, name) for tree in trees]) for name in Tree._fields[:6]
        )
        is_leaf = is_leaf.astype(bool)
        own = np.arange(len(is_leaf), dtype=np.intp)
        left = np.where(is_leaf, own, left.astype(np.intp) + shift)
        right = np.where(is_leaf, own, right.astype(np.intp) + shift)
        return cls(
            roots=offsets,
            feature=np.where(is_leaf, 0, feature).astype(np.intp),
            threshold=threshold.astype(np.float64),
            children=np.stack([left, right], axis=1).ravel(),
            value=value.astype(np.float64),
            depth=max(tree.depth for tree in trees),
        )

    def leaf_sums(self, features: np.ndarray) -> np.ndarray:
        """(rows,) sums over the trees of the leaf each row reaches, walked a block of rows at a time."""
        block = max(1, _BLOCK_NODES // len(self.roots))
        if len(features) <= block:
            return self.leaf_values(features).sum(axis=1)
        return np.concatenate(
            [
                self.leaf_values(features[start : start + block]).sum(axis=1)
                for start in range(0, len(features), block)
            ]
        )

    def leaf_values(self, features: np.ndarray) -> np.ndarray:
        """(rows, trees) values of the leaf each row reaches in each tree."""
        rows, width = features.shape
        node = np.tile(self.roots, (rows, 1))
        row_start = (np.arange(rows, dtype=np.intp) * width)[:, None]
        flat = features.ravel()
        for _ in range(self.depth):
            right = flat.take(row_start + self.feature.take(node)) > self.threshold.take(node)
            node = self.children.take(2 * node + right)
        return self.value.take(node)


def _sklearn_tree(tree: Any, value: np.ndarray) -> Tree:
    """A fitted ``sklearn.tree`` structure in :meth:`Forest.of`'s layout, with the given leaf values."""
    is_leaf = tree.children_left == -1
    return Tree(
        tree.feature,
        tree.threshold,
        tree.children_left,
        tree.children_right,
        is_leaf,
        value,
        int(tree.max_depth),
    )


@dataclass(frozen=True, eq=False)
class Boosted:
    """A boosted ensemble's probability: the logistic function of its start plus its trees' sum."""

    forest: Forest
    start: float
    rate: float  # the learning rate (1.0 when the leaves hold it already)
    float32: bool  # the trees compare float32 inputs, as fitted

    def __call__(self, features: np.ndarray) -> np.ndarray:
        if self.float32:
            features = features.astype(np.float32)
        return expit(self.start + self.rate * self.forest.leaf_sums(features))


@dataclass(frozen=True, eq=False)
class Averaged:
    """A random forest's probability: the mean of its trees' leaf fractions (float32 inputs, as fitted)."""

    forest: Forest
    size: int

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.forest.leaf_sums(features.astype(np.float32)) / self.size


def _gradient_boosting(model: Any) -> Probabilities | None:
    from sklearn.dummy import DummyClassifier

    if model.loss != "log_loss" or not (model.init_ == "zero" or type(model.init_) is DummyClassifier):
        return None  # a custom init estimator makes the starting score depend on the row
    forest = Forest.of(
        [_sklearn_tree(tree.tree_, tree.tree_.value[:, 0, 0]) for tree in model.estimators_[:, 0]]
    )
    one_row = np.zeros((1, model.n_features_in_), dtype=np.float32)
    start = float(model._raw_predict_init(one_row)[0, 0])
    return Boosted(forest, start, float(model.learning_rate), float32=True)


def _hist_gradient_boosting(model: Any) -> Probabilities | None:
    if model.n_trees_per_iteration_ != 1 or model.loss != "log_loss" or model._preprocessor is not None:
        return None  # (the preprocessor reorders columns when categorical features are declared)
    nodes = [predictor.nodes for (predictor,) in model._predictors]
    if any(tree["is_categorical"].any() for tree in nodes):
        return None
    forest = Forest.of(
        [
            Tree(
                n["feature_idx"],
                n["num_threshold"],
                n["left"],
                n["right"],
                n["is_leaf"],
                n["value"],
                int(n["depth"].max()),
            )
            for n in nodes
        ]
    )
    start = float(np.ravel(model._baseline_prediction)[0])
    return Boosted(forest, start, 1.0, float32=False)


def _random_forest(model: Any) -> Probabilities | None:
    if model.n_outputs_ != 1:
        return None
    trees = []
    for estimator in model.estimators_:
        counts = estimator.tree_.value[:, 0, :]
        totals = counts.sum(axis=1)
        trees.append(_sklearn_tree(estimator.tree_, counts[:, 1] / np.where(totals == 0, 1.0, totals)))
    return Averaged(Forest.of(trees), len(trees))


def _transform(step: Any) -> Transform | None:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if type(step) is MinMaxScaler:
        return _min_max(step)
    if type(step) is StandardScaler:
        return _standard(step)
    if type(step) is ColumnTransformer:
        return _columns(step)
    return None


@dataclass(frozen=True, eq=False)
class MinMax:
    """As ``MinMaxScaler.transform``: X *= scale_; X += min_; then clipped if asked."""

    scale: np.ndarray
    offset: np.ndarray
    low: float
    high: float
    clip: bool

    def __call__(self, features: np.ndarray) -> np.ndarray:
        out = features * self.scale
        out += self.offset
        if self.clip:
            np.clip(out, self.low, self.high, out=out)
        return out


@dataclass(frozen=True, eq=False)
class Standard:
    """As ``StandardScaler.transform``: X -= mean_; X /= scale_ (each when the scaler uses it)."""

    mean: np.ndarray | None
    scale: np.ndarray | None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        out = features.copy()
        if self.mean is not None:
            out -= self.mean
        if self.scale is not None:
            out /= self.scale
        return out


@dataclass(frozen=True, eq=False)
class Columns:
    """As ``ColumnTransformer.transform``: each part's columns, transformed or passed through, in order."""

    parts: tuple[tuple[np.ndarray, Transform | None], ...]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        blocks = [
            features[:, indices] if transform is None else transform(features[:, indices])
            for indices, transform in self.parts
        ]
        return np.hstack(blocks)


def _min_max(step: Any) -> Transform:
    low, high = step.feature_range
    return MinMax(step.scale_, step.min_, low, high, bool(step.clip))


def _standard(step: Any) -> Transform | None:
    if step.with_mean and step.mean_ is None:
        return None
    return Standard(step.mean_ if step.with_mean else None, step.scale_ if step.with_std else None)


def _is_identity(transformer: Any) -> bool:
    """``"passthrough"``, or what scikit-learn 1.9 turns a passthrough remainder into."""
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(transformer, str):
        return transformer == "passthrough"
    return type(transformer) is FunctionTransformer and transformer.func is None


def _columns(step: Any) -> Transform | None:
    if getattr(step, "sparse_output_", False):
        return None
    parts: list[tuple[np.ndarray, Transform | None]] = []
    for _, transformer, columns in step.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        indices = np.asarray(columns)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            return None  # columns by name, callable or slice: not rebuilt
        if len(indices) == 0:
            continue
        if _is_identity(transformer):
            parts.append((indices, None))
            continue
        transform = _transform(transformer)
        if transform is None:
            return None
        parts.append((indices, transform))
    return Columns(tuple(parts))
