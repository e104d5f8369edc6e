"""Hyper-parameter search: search spaces per family, stratified repeated CV, and the Optuna study.

Everything that touches the class imbalance (balanced weights, SMOTE) is a hyper-parameter of the
pipeline, so it is fitted on training folds only; validation folds keep the natural class prior.
The decision threshold is the F1-optimal one on the out-of-fold validation probabilities.
A study is cheap: folds and their parameter-independent preparation are computed once
(``reggaeton.folds``), each fold's score is reported so the median pruner stops poor trials early,
known-good points (the champion, the baseline's equivalent) are evaluated first, and parallel
trials are scored in worker processes (``reggaeton.trial_pool``), one per core, one native thread each.
No MLflow here: the caller passes Optuna callbacks (one per finished trial) to record trials.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.trial import FrozenTrial, Trial, TrialState
from sklearn.metrics import average_precision_score
from threadpoolctl import threadpool_limits

from reggaeton import model
from reggaeton.folds import Folds
from reggaeton.metrics import best_f1_threshold
from reggaeton.study_share import FINISHED
from reggaeton.trial_pool import FoldReport, TrialPool

logger = logging.getLogger(__name__)

FAMILY_PARAM: Final = "family"
# Trial user attributes (read back by the trial loggers); a pruned trial has all but the threshold.
FAMILY: Final = "family"
CV_MEAN: Final = "cv_pr_auc_mean"
CV_STD: Final = "cv_pr_auc_std"
FOLDS_SCORED: Final = "cv_folds_scored"
THRESHOLD: Final = "threshold"
PARAMS: Final = "params"
FIT_SECONDS: Final = "cv_seconds"
WORKER: Final = "worker"  # the worker (host name by default) that ran the trial

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
    family: str, params: Mapping[str, Any], folds: Folds, seed: int, on_fold: FoldReport | None = None
) -> CVResult:
    """Cross-validated PR-AUC (average precision) of one pipeline on prepared folds.

    Args:
        family: Model family.
        params: Its hyper-parameters (with ``imbalance``).
        folds: The study's folds; the steps before the estimator come from their cache.
        seed: Seed of the pipeline's steps and estimator.
        on_fold: Called after each fold with its index and the scores so far; it may raise
            ``optuna.TrialPruned`` to stop the trial.
    """
    oof_sum = np.zeros(len(folds.y))
    scores: list[float] = []
    for index, (_, valid_idx) in enumerate(folds.splits):
        *steps, (_, estimator) = model.build_pipeline(family, params, seed).steps
        X_fit, y_fit, X_valid = folds.for_estimator(index, steps, estimator)
        estimator.fit(X_fit, y_fit)
        proba = estimator.predict_proba(X_valid)[:, 1]
        oof_sum[valid_idx] += proba
        scores.append(float(average_precision_score(folds.valid_target(index), proba)))
        if on_fold is not None:
            on_fold(index, tuple(scores))
    oof = oof_sum / folds.repeats
    return CVResult(
        mean=float(np.mean(scores)),
        std=float(np.std(scores)),
        fold_scores=tuple(scores),
        threshold=best_f1_threshold(folds.y, oof),
        oof_proba=oof,
    )


def _pruning_report(trial: Trial, folds: int) -> FoldReport:
    """Report the running mean PR-AUC after each fold; stop the trial when the pruner says so.

    Never after the last fold: the work is done by then, and the trial's score is complete.
    """

    def report(index: int, scores: tuple[float, ...]) -> None:
        trial.report(float(np.mean(scores)), index)
        if len(scores) < folds and trial.should_prune():
            trial.set_user_attr(CV_MEAN, float(np.mean(scores)))
            trial.set_user_attr(CV_STD, float(np.std(scores)))
            trial.set_user_attr(FOLDS_SCORED, len(scores))
            raise optuna.TrialPruned(f"running PR-AUC {np.mean(scores):.3f} after {len(scores)} folds")

    return report


Score = Callable[[str, Mapping[str, Any], FoldReport | None], CVResult]


def in_process(folds: Folds, seed: int) -> Score:
    """Score trials in the calling thread (one trial at a time: see ``trial_pool`` for why)."""

    def score(family: str, params: Mapping[str, Any], on_fold: FoldReport | None) -> CVResult:
        # OpenMP thread limits are per thread: set them in the trial's own thread.
        with threadpool_limits(limits=THREADS_PER_TRIAL, user_api="openmp"):
            return cross_validate(family, params, folds, seed, on_fold)

    return score


def objective(
    score: Score, families: Sequence[str], *, folds: int, worker: str | None = None
) -> Callable[[Trial], float]:
    """The Optuna objective: mean CV PR-AUC of the suggested pipeline (maximise), each fold reported.

    Args:
        score: Scores a pipeline on the study's folds (``in_process``, or a ``TrialPool``'s workers).
        families: Model families to search over.
        folds: Folds per trial (CV folds x repeats), for the pruning reports.
        worker: Recorded on each trial (``WORKER``); default: this host's name.
    """
    worker = worker or socket.gethostname()

    def _objective(trial: Trial) -> float:
        family, params = suggest(trial, families)
        trial.set_user_attr(WORKER, worker)
        trial.set_user_attr(FAMILY, family)
        trial.set_user_attr(PARAMS, params)
        started = time.perf_counter()
        try:
            result = score(family, params, _pruning_report(trial, folds))
        finally:
            trial.set_user_attr(FIT_SECONDS, time.perf_counter() - started)
        trial.set_user_attr(CV_MEAN, result.mean)
        trial.set_user_attr(CV_STD, result.std)
        trial.set_user_attr(FOLDS_SCORED, len(result.fold_scores))
        trial.set_user_attr(THRESHOLD, result.threshold)
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
    pruned: int = 0


def trial_family_and_params(trial: FrozenTrial) -> tuple[str, dict[str, Any]]:
    """A trial's family and plain estimator parameters (also for a pruned trial)."""
    family = trial.user_attrs.get(FAMILY, trial.params.get(FAMILY_PARAM))
    return str(family), dict(trial.user_attrs[PARAMS])


def study_params(family: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Plain estimator parameters as the study names them (for ``enqueue_trial``)."""
    return {FAMILY_PARAM: family, **{f"{family}.{key}": value for key, value in params.items()}}


# The data scientist's model (300 depth-3 trees, learning rate 0.1, SMOTE) in the histogram gradient
# boosting space: depth 3 is 8 leaves; 300 trees and 177 rows per leaf are clipped to the space's ends.
BASELINE_IN_SPACE: Final[dict[str, Any]] = {
    "learning_rate": 0.1,
    "max_iter": 200,
    "max_leaf_nodes": 8,
    "min_samples_leaf": 60,
    "l2_regularization": 1e-6,
    model.IMBALANCE: model.SMOTE_RESAMPLING,
}


def warm_start_trials(
    families: Sequence[str], champion: tuple[str, Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """The first trials of a retrain: the champion's parameters, then the baseline's equivalent.

    Each is kept only when its family is searched. A champion's parameters outside today's space
    are still evaluated as they are (Optuna warns); missing ones are sampled.
    """
    trials = []
    if champion is not None and champion[0] in families:
        trials.append(study_params(*champion))
    if model.HIST_GRADIENT_BOOSTING in families:
        trials.append(study_params(model.HIST_GRADIENT_BOOSTING, BASELINE_IN_SPACE))
    return trials


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Native (OpenMP/BLAS) threads per trial. Parallel trials use the cores instead: on data this small two
# OpenMP threads made a histogram gradient boosting fit slower than one (0.57 vs 0.28 s), and 10-20x
# slower on a loaded machine (their spin-waits compete with the other processes).
THREADS_PER_TRIAL: Final = 1


# A worker process takes ~3 s to start (imports), the time of 3-5 trials on this data: when the number
# of parallel trials is left to the machine, each worker must have at least this many trials to score.
TRIALS_PER_WORKER: Final = 5


def parallel_trials(n_jobs: int | None, n_trials: int, cores: int | None = None) -> int:
    """Trials scored at once (one worker process each above 1), never more than the cores or the trials.

    Args:
        n_jobs: Parallel trials asked for; None: one per core, and one per ``TRIALS_PER_WORKER`` trials.
        n_trials: Trials the study will run.
        cores: The machine's cores (default: ``available_cores()``).
    """
    cores = cores or available_cores()
    wanted = n_jobs if n_jobs is not None else max(1, n_trials // TRIALS_PER_WORKER)
    return max(1, min(wanted, cores, n_trials))


def create_study(
    storage: str | BaseStorage, study_name: str, seed: int, *, pruning: bool = True
) -> optuna.Study:
    """A maximising TPE study in persistent storage (resumed when it already exists).

    The one place a study is built: a shared RDB storage URL is all several workers need to tune it.
    With ``pruning``, a trial whose running mean PR-AUC after a fold (the first fold excepted) is
    below the median of earlier trials at that fold is stopped, once five trials have completed.
    """
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
        if pruning
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def study_result(storage: str | BaseStorage, study_name: str) -> TuningResult:
    """The best trial of a study in storage (tuned by this process or by others)."""
    return _result(optuna.load_study(study_name=study_name, storage=storage))


def _result(study: optuna.Study) -> TuningResult:
    best = study.best_trial
    family, params = trial_family_and_params(best)
    assert best.value is not None  # a completed trial of a single-objective study
    return TuningResult(
        study_name=study.study_name,
        family=family,
        params=params,
        cv_mean=float(best.value),
        cv_std=float(best.user_attrs[CV_STD]),
        threshold=float(best.user_attrs[THRESHOLD]),
        n_trials=len(study.trials),
        best_trial=best.number,
        pruned=sum(trial.state == TrialState.PRUNED for trial in study.trials),
    )


def _write_through(stored: optuna.Study, first: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback copying each ended trial of an in-memory study to ``stored``, its persistent copy.

    Trials are written in the order of their numbers, from ``first`` (the copy's next number): one that
    ends before an earlier one waits for it, so the stored copy numbers its trials as the study does
    (warm-start trials first, MLflow's ``trial-NNN`` runs). A crash loses at most the waiting ones.
    """
    waiting: dict[int, FrozenTrial] = {}
    lock = threading.Lock()
    following = first

    def write(_study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal following
        with lock:
            waiting[trial.number] = trial
            while following in waiting:
                ended = waiting.pop(following)
                following += 1
                try:
                    stored.add_trial(ended)
                except Exception as error:  # the study goes on in memory; only a resume would miss it
                    logger.warning(
                        "could not store trial %d of %s: %s", ended.number, stored.study_name, error
                    )

    return write


def start_pool(
    X: np.ndarray, y: np.ndarray, *, processes: int, folds: int, repeats: int, seed: int
) -> TrialPool:
    """Worker processes scoring this module's cross-validation of ``X, y`` on these folds, one thread each."""
    return TrialPool(
        cross_validate, X, y, processes=processes, folds=folds, repeats=repeats, seed=seed,
        threads=THREADS_PER_TRIAL,
    )  # fmt: skip


def _scoring(
    stack: contextlib.ExitStack[Any], pool: TrialPool | None, X: np.ndarray, y: np.ndarray, parallel: int,
    *, folds: int, repeats: int, seed: int,
) -> tuple[Score, int]:  # fmt: skip
    """How trials are scored, and how many at a time: a given pool, new worker processes, or here."""
    if pool is not None:
        if not pool.serves(X, y, folds=folds, repeats=repeats, seed=seed):
            raise ValueError("the trial pool was started for other rows or folds than this study's")
        return pool.evaluate, min(pool.processes, parallel)
    if parallel > 1:
        started = start_pool(X, y, processes=parallel, folds=folds, repeats=repeats, seed=seed)
        return stack.enter_context(started).evaluate, parallel
    return in_process(Folds(X, y, folds=folds, repeats=repeats, seed=seed), seed), 1


def _open_study(
    storage: str | BaseStorage, study_name: str, sampler_seed: int, *, pruning: bool, shared: bool
) -> tuple[optuna.Study, list[Callable[[optuna.Study, FrozenTrial], None]]]:
    """The study to optimize, and the callback writing its trials to storage when it is a copy in memory."""
    stored = create_study(storage, study_name, sampler_seed, pruning=pruning)
    if shared:
        return stored, []
    study = create_study(InMemoryStorage(), study_name, sampler_seed, pruning=pruning)
    # Failed trials too, so the copy numbers its trials as the stored study does (RUNNING or WAITING ones
    # belong to nobody here: a crashed run's are failed by ``study_share.finish_study``).
    study.add_trials(stored.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL)))
    return study, [_write_through(stored, len(study.trials))]


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
    n_jobs: int | None = 1,
    timeout_s: float | None = None,
    callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] = (),
    progress_bar: bool = True,
    enqueue: Sequence[Mapping[str, Any]] = (),
    warm_start: Sequence[Mapping[str, Any]] = (),
    pruning: bool = True,
    worker: str | None = None,
    sampler_seed: int | None = None,
    shared: bool = False,
    pool: TrialPool | None = None,
) -> TuningResult:
    """Run ``n_trials`` trials, the warm-start ones first, ``n_jobs`` at a time.

    Results are reproducible for a given seed and data with ``n_jobs=1``; parallel trials finish in
    a timing-dependent order, which changes what TPE samples next and what the pruner compares with.

    Args:
        X: Training features in schema order.
        y: Binary target.
        storage: Optuna RDB storage URL (a shared Postgres URL lets several workers tune one study),
            or a storage object.
        study_name: Name of the study in that storage.
        families: Model families to search over.
        n_trials: Trials to run in this call (warm-start ones included).
        folds: Folds per CV repeat.
        repeats: CV repeats.
        seed: Seed of the sampler, the CV splits and the models.
        n_jobs: Parallel trials (None: decided from the cores and ``n_trials``); see ``parallel_trials``.
            Above 1 they are scored
            in that many worker processes (``TrialPool``); the study and the callbacks stay here.
        timeout_s: Stop starting trials after this many seconds.
        callbacks: Called after each finished or pruned trial, in the trial's thread.
        progress_bar: Show Optuna's progress bar on the terminal.
        enqueue: Trial parameters (study names) to evaluate first, in order, in parallel (replaying a
            study). Not with ``shared`` and ``n_jobs > 1`` on SQLite: two threads can claim the same
            enqueued trial (no row locks), and Optuna then fails with "Cannot tell a COMPLETE trial".
        warm_start: Trial parameters (study names, see ``warm_start_trials``) evaluated first (one at a
            time when ``shared``); skipped when the study already has them (a resumed study).
        pruning: Stop poor trials after a fold (median pruner); off, every trial scores every fold.
        worker: Recorded on each trial (``WORKER``); default: this host's name.
        sampler_seed: Seed of this process's sampler (default: ``seed``). Processes sharing a study need
            different ones, or they sample the same points; the folds and models keep ``seed``.
        shared: Other processes tune the study at the same time (a tuning run of a spread study):
            work on the storage itself, so each sees the others' trials. Otherwise the study is tuned
            in memory, starting from the stored study's ended trials, and each finished trial is
            written to the storage as it ends (one write instead of ~15 reads and writes per trial:
            on SQLite those cost ~230 CPU-ms a trial, taken from the cores the trials run on), in
            the order of their numbers.
        pool: Worker processes already started for these rows and folds (``TrialPool.serves``), used
            instead of starting ``n_jobs`` new ones (several studies on the same data).
    """
    unknown = [f for f in families if f not in SEARCH_SPACES]
    if unknown:
        raise ValueError(f"no search space for {', '.join(unknown)}; known: {', '.join(SEARCH_SPACES)}")
    parallel = parallel_trials(n_jobs, n_trials)
    logger.info(
        "tuning %s: %d trials, %d at a time (in worker processes above 1), families %s, pruning %s, "
        "%d warm-start",
        study_name, n_trials, parallel, families, pruning, len(warm_start),
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        # The workers start first: they import while the study is loaded here (~3 s vs ~1 s).
        score, parallel = _scoring(stack, pool, X, y, parallel, folds=folds, repeats=repeats, seed=seed)
        sampler = seed if sampler_seed is None else sampler_seed
        study, write_through = _open_study(storage, study_name, sampler, pruning=pruning, shared=shared)
        called = [*write_through, *callbacks]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def optimize(trials: int, jobs: int) -> None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # A trial whose parameters cannot fit this data (SMOTE needs more positives in a training
            # fold than its neighbours, on a small data set) fails alone; the study goes on.
            study.optimize(
                run, n_trials=trials, timeout=remaining, n_jobs=jobs, callbacks=called,
                show_progress_bar=progress_bar, catch=(ValueError,),
            )  # fmt: skip

        run = objective(score, families, folds=folds * repeats, worker=worker)
        # BLAS pools are process-wide: limit them here too (OpenMP is limited per trial).
        stack.enter_context(threadpool_limits(limits=THREADS_PER_TRIAL))
        for params in warm_start:
            study.enqueue_trial(dict(params), skip_if_exists=True)
        first = 0
        if shared:
            # On a shared storage (SQLite above all: no row locks) two threads could take the same
            # waiting trial: those run one at a time. In memory, threads take distinct ones, and the
            # other workers start sampling meanwhile (TPE's first trials are random anyway).
            first = min(n_trials, len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
            if first:
                optimize(first, 1)
        for params in enqueue:
            study.enqueue_trial(dict(params))
        if n_trials > first:
            optimize(n_trials - first, parallel)
    return _result(study)
