"""Hyper-parameter search: search spaces per family, stratified repeated CV, and the Optuna study.

Everything that touches the class imbalance (balanced weights, SMOTE) is a hyper-parameter of the
pipeline, so it is fitted on training folds only; validation folds keep the natural class prior.
The decision threshold is the F1-optimal one on the out-of-fold validation probabilities.
No MLflow here: the caller passes Optuna callbacks (one per finished trial) to record trials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial
from sklearn.metrics import average_precision_score
from sklearn.model_selection import RepeatedStratifiedKFold
from threadpoolctl import threadpool_limits

from reggaeton import model
from reggaeton.metrics import best_f1_threshold

logger = logging.getLogger(__name__)

FAMILY_PARAM: Final = "family"
# Trial user attributes (read back by the trial loggers).
CV_STD: Final = "cv_pr_auc_std"
THRESHOLD: Final = "threshold"
PARAMS: Final = "params"
FIT_SECONDS: Final = "cv_seconds"

SearchSpace = Callable[[Trial, str], dict[str, Any]]


def _imbalance(trial: Trial, prefix: str) -> str:
    return trial.suggest_categorical(f"{prefix}{model.IMBALANCE}", model.IMBALANCE_CHOICES)


def _hist_gradient_boosting_space(trial: Trial, prefix: str) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float(f"{prefix}learning_rate", 0.03, 0.3, log=True),
        "max_iter": trial.suggest_int(f"{prefix}max_iter", 30, 200),
        "max_leaf_nodes": trial.suggest_int(f"{prefix}max_leaf_nodes", 4, 31),
        "min_samples_leaf": trial.suggest_int(f"{prefix}min_samples_leaf", 5, 60),
        "l2_regularization": trial.suggest_float(f"{prefix}l2_regularization", 1e-6, 10.0, log=True),
        model.IMBALANCE: _imbalance(trial, prefix),
    }


def _logistic_regression_space(trial: Trial, prefix: str) -> dict[str, Any]:
    return {
        "C": trial.suggest_float(f"{prefix}C", 1e-3, 100.0, log=True),
        model.IMBALANCE: _imbalance(trial, prefix),
    }


def _random_forest_space(trial: Trial, prefix: str) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int(f"{prefix}n_estimators", 50, 150),
        "max_depth": trial.suggest_int(f"{prefix}max_depth", 3, 12),
        "min_samples_leaf": trial.suggest_int(f"{prefix}min_samples_leaf", 1, 20),
        "max_features": trial.suggest_float(f"{prefix}max_features", 0.3, 1.0),
        model.IMBALANCE: _imbalance(trial, prefix),
    }


SEARCH_SPACES: Final[dict[str, SearchSpace]] = {
    model.HIST_GRADIENT_BOOSTING: _hist_gradient_boosting_space,
    model.LOGISTIC_REGRESSION: _logistic_regression_space,
    model.RANDOM_FOREST: _random_forest_space,
}


def suggest(trial: Trial, families: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Pick a family and its hyper-parameters for one trial.

    Parameter names in the study are prefixed with the family (``random_forest.max_depth``) so each
    name keeps one distribution; the returned dict has the plain estimator names.
    """
    family = trial.suggest_categorical(FAMILY_PARAM, tuple(families))
    return family, SEARCH_SPACES[family](trial, f"{family}.")


@dataclass(frozen=True)
class CVResult:
    """Cross-validated PR-AUC and the threshold chosen on out-of-fold probabilities."""

    mean: float
    std: float
    fold_scores: tuple[float, ...]
    threshold: float
    oof_proba: np.ndarray  # mean over repeats of the out-of-fold probability of each row


def cross_validate(
    family: str,
    params: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    *,
    folds: int,
    repeats: int,
    seed: int,
) -> CVResult:
    """Stratified repeated k-fold CV of one pipeline, scored by PR-AUC (average precision)."""
    y = np.asarray(y)
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    oof_sum = np.zeros(len(y))
    scores = []
    for train_idx, valid_idx in cv.split(X, y):
        pipeline = model.build_pipeline(family, params, seed)
        pipeline.fit(X[train_idx], y[train_idx])
        proba = pipeline.predict_proba(X[valid_idx])[:, 1]
        oof_sum[valid_idx] += proba
        scores.append(float(average_precision_score(y[valid_idx], proba)))
    oof = oof_sum / repeats
    return CVResult(
        mean=float(np.mean(scores)),
        std=float(np.std(scores)),
        fold_scores=tuple(scores),
        threshold=best_f1_threshold(y, oof),
        oof_proba=oof,
    )


def objective(
    X: np.ndarray, y: np.ndarray, families: Sequence[str], *, folds: int, repeats: int, seed: int
) -> Callable[[Trial], float]:
    """The Optuna objective: mean CV PR-AUC of the suggested pipeline (maximise)."""

    def _objective(trial: Trial) -> float:
        family, params = suggest(trial, families)
        started = time.perf_counter()
        # OpenMP thread limits are per thread: set them in the trial's own worker thread.
        with threadpool_limits(limits=1, user_api="openmp"):
            result = cross_validate(family, params, X, y, folds=folds, repeats=repeats, seed=seed)
        trial.set_user_attr(FIT_SECONDS, time.perf_counter() - started)
        trial.set_user_attr(CV_STD, result.std)
        trial.set_user_attr(THRESHOLD, result.threshold)
        trial.set_user_attr(PARAMS, params)
        return result.mean

    return _objective


@dataclass(frozen=True)
class TuningResult:
    """The best trial of a study."""

    study_name: str
    family: str
    params: dict[str, Any]
    cv_mean: float
    cv_std: float
    threshold: float
    n_trials: int
    best_trial: int


def trial_family_and_params(trial: FrozenTrial) -> tuple[str, dict[str, Any]]:
    """A finished trial's family and plain estimator parameters."""
    return str(trial.params[FAMILY_PARAM]), dict(trial.user_attrs[PARAMS])


def create_study(storage: str | BaseStorage, study_name: str, seed: int) -> optuna.Study:
    """A maximising TPE study in persistent storage (resumed when it already exists)."""
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=optuna.samplers.TPESampler(seed=seed),
        direction="maximize",
        load_if_exists=True,
    )


def tune(
    X: np.ndarray,
    y: np.ndarray,
    *,
    storage: str | BaseStorage,
    study_name: str,
    families: Sequence[str],
    n_trials: int,
    folds: int,
    repeats: int,
    seed: int,
    n_jobs: int = 1,
    timeout_s: float | None = None,
    callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] = (),
    progress_bar: bool = True,
    enqueue: Sequence[Mapping[str, Any]] = (),
) -> TuningResult:
    """Run ``n_trials`` trials (``n_jobs`` in parallel threads, one BLAS/OpenMP thread each).

    Results are reproducible for a given seed and data with ``n_jobs=1``; parallel trials finish in
    a timing-dependent order, which changes what TPE samples next.

    Args:
        X: Training features in schema order.
        y: Binary target.
        storage: Optuna RDB storage URL (a shared Postgres URL lets several workers tune one study),
            or a storage object.
        study_name: Name of the study in that storage.
        families: Model families to search over.
        n_trials: Trials to run in this call.
        folds: Folds per CV repeat.
        repeats: CV repeats.
        seed: Seed of the sampler, the CV splits and the models.
        n_jobs: Parallel trials.
        timeout_s: Stop starting trials after this many seconds.
        callbacks: Called after each finished trial, in the trial's thread (e.g. an MLflow logger).
        progress_bar: Show Optuna's progress bar on the terminal.
        enqueue: Trial parameters (study names) to evaluate first, in order (replaying a study). With
            ``n_jobs > 1`` use an in-memory storage: on SQLite two threads can claim the same
            enqueued trial (no row locks), and Optuna then fails with "Cannot tell a COMPLETE trial".
    """
    unknown = [f for f in families if f not in SEARCH_SPACES]
    if unknown:
        raise ValueError(f"no search space for {', '.join(unknown)}; known: {', '.join(SEARCH_SPACES)}")
    study = create_study(storage, study_name, seed)
    for params in enqueue:
        study.enqueue_trial(dict(params))
    logger.info("tuning %s: %d trials, %d parallel, families %s", study_name, n_trials, n_jobs, families)
    # BLAS pools are process-wide: limit them for the whole study (OpenMP is limited per trial).
    with threadpool_limits(limits=1):
        study.optimize(
            objective(X, y, families, folds=folds, repeats=repeats, seed=seed),
            n_trials=n_trials,
            timeout=timeout_s,
            n_jobs=n_jobs,
            callbacks=list(callbacks),
            show_progress_bar=progress_bar,
        )
    best = study.best_trial
    family, params = trial_family_and_params(best)
    assert best.value is not None  # a completed trial of a single-objective study
    return TuningResult(
        study_name=study_name,
        family=family,
        params=params,
        cv_mean=float(best.value),
        cv_std=float(best.user_attrs[CV_STD]),
        threshold=float(best.user_attrs[THRESHOLD]),
        n_trials=len(study.trials),
        best_trial=best.number,
    )
