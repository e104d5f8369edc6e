"""Search spaces, cross-validation and the Optuna study on small synthetic data."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
from sklearn.metrics import average_precision_score
from sqlalchemy.exc import OperationalError

from reggaeton import tuning
from reggaeton.data import features_array, synthetic_dataset
from reggaeton.folds import Folds
from reggaeton.model import (
    HIST_GRADIENT_BOOSTING,
    IMBALANCE,
    IMBALANCE_CHOICES,
    LOGISTIC_REGRESSION,
    RANDOM_FOREST,
    build_pipeline,
)
from reggaeton.settings import POSTGRES_CONNECT_ARGS, Settings


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    data = synthetic_dataset(600, seed=5)
    return features_array(data.frame), data.y.to_numpy()


@pytest.mark.parametrize("family", sorted(tuning.SEARCH_SPACES))
@pytest.mark.parametrize("imbalance", IMBALANCE_CHOICES)
def test_every_search_space_builds_a_pipeline_that_cross_validates(
    family: str, imbalance: str, xy: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = xy
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    chosen, params = tuning.suggest(trial, [family])
    params = {**params, IMBALANCE: imbalance}
    folds = Folds(X, y, folds=3, repeats=2, seed=0)
    result = tuning.cross_validate(chosen, params, folds, seed=0)
    assert chosen == family
    assert len(result.fold_scores) == 6
    assert 0.0 <= result.mean <= 1.0 and result.std >= 0.0
    # PR-AUC of a random ranking is the prior (3 %): every family learns something.
    assert result.mean > 2 * y.mean()
    assert 0.0 < result.threshold < 1.0
    assert result.oof_proba.shape == y.shape
    # The prepared folds hand the estimator what the whole pipeline would: the same scores.
    for index, (train_idx, valid_idx) in enumerate(folds.splits):
        pipeline = build_pipeline(family, params, 0).fit(X[train_idx], y[train_idx])
        proba = pipeline.predict_proba(X[valid_idx])[:, 1]
        assert result.fold_scores[index] == pytest.approx(average_precision_score(y[valid_idx], proba))


def test_cross_validation_is_deterministic_for_a_seed(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = xy
    params = {"C": 1.0, IMBALANCE: "smote"}
    first = tuning.cross_validate(LOGISTIC_REGRESSION, params, Folds(X, y, folds=3, repeats=1, seed=3), 3)
    again = tuning.cross_validate(LOGISTIC_REGRESSION, params, Folds(X, y, folds=3, repeats=1, seed=3), 3)
    other = tuning.cross_validate(LOGISTIC_REGRESSION, params, Folds(X, y, folds=3, repeats=1, seed=4), 4)
    assert first.fold_scores == again.fold_scores
    assert first.fold_scores != other.fold_scores


def test_study_persists_in_rdb_storage_and_resumes(
    settings: Settings, xy: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = xy
    settings.ensure_state_dir()
    seen: list[int] = []
    common = {
        "storage": settings.optuna_storage,
        "study_name": "resume-me",
        "families": [LOGISTIC_REGRESSION],
        "folds": 3,
        "repeats": 1,
        "seed": 1,
        "progress_bar": False,
        "callbacks": [lambda _study, trial: seen.append(trial.number)],
    }
    first = tuning.tune(X, y, n_trials=3, **common)
    second = tuning.tune(X, y, n_trials=2, n_jobs=2, **common)
    assert first.n_trials == 3 and second.n_trials == 5
    assert sorted(seen) == [0, 1, 2, 3, 4]
    stored = optuna.load_study(study_name="resume-me", storage=settings.optuna_storage)
    assert len(stored.trials) == 5
    assert second.cv_mean == pytest.approx(stored.best_value)
    assert second.family == LOGISTIC_REGRESSION and "C" in second.params
    assert 0.0 < second.threshold < 1.0


def test_unknown_family_is_refused(settings: Settings, xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = xy
    with pytest.raises(ValueError, match="no search space for svm"):
        tuning.tune(
            X,
            y,
            storage=settings.optuna_storage,
            study_name="s",
            families=["svm"],
            n_trials=1,
            folds=3,
            repeats=1,
            seed=0,
            progress_bar=False,
        )


def test_poor_trials_are_pruned_after_a_fold_and_keep_their_partial_scores(
    xy: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = xy
    common = {
        "storage": InMemoryStorage(),
        "families": [LOGISTIC_REGRESSION, RANDOM_FOREST],  # far apart: the weaker one gets pruned
        "n_trials": 12,
        "folds": 4,
        "repeats": 1,
        "seed": 2,
        "progress_bar": False,
    }
    tuning.tune(X, y, study_name="pruned", **common)
    study = optuna.load_study(study_name="pruned", storage=common["storage"])
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    for trial in pruned:
        scored = trial.user_attrs[tuning.FOLDS_SCORED]
        assert 2 <= scored < 4  # never on the first fold alone, never after the last
        assert trial.user_attrs[tuning.CV_MEAN] == pytest.approx(trial.intermediate_values[scored - 1])
    for trial in complete:
        assert trial.user_attrs[tuning.FOLDS_SCORED] == 4 and len(trial.intermediate_values) == 4
    tuning.tune(X, y, study_name="unpruned", pruning=False, **common)
    unpruned = optuna.load_study(study_name="unpruned", storage=common["storage"])
    assert all(t.state == TrialState.COMPLETE for t in unpruned.trials)


def test_warm_start_trials_come_first_and_once(settings: Settings, xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = xy
    settings.ensure_state_dir()
    champion = (RANDOM_FOREST, {"n_estimators": 60, "max_depth": 4, "min_samples_leaf": 3,
                                "max_features": 0.5, IMBALANCE: "class_weight"})  # fmt: skip
    families = [RANDOM_FOREST, HIST_GRADIENT_BOOSTING]
    warm = tuning.warm_start_trials(families, champion)
    assert tuning.warm_start_trials([LOGISTIC_REGRESSION], champion) == []
    common = {
        "storage": settings.optuna_storage,  # SQLite: warm-start trials run one at a time
        "study_name": "warm",
        "families": families,
        "folds": 3,
        "repeats": 1,
        "seed": 0,
        "progress_bar": False,
        "n_jobs": 2,
        "warm_start": warm,
    }
    tuning.tune(X, y, n_trials=3, **common)
    tuning.tune(X, y, n_trials=1, **common)  # resumed: the warm-start trials are not repeated
    trials = optuna.load_study(study_name="warm", storage=settings.optuna_storage).trials
    assert len(trials) == 4
    assert tuning.trial_family_and_params(trials[0]) == (RANDOM_FOREST, champion[1])
    assert tuning.trial_family_and_params(trials[1]) == (HIST_GRADIENT_BOOSTING, tuning.BASELINE_IN_SPACE)
    assert all(tuning.trial_family_and_params(t)[1] != tuning.BASELINE_IN_SPACE for t in trials[2:])


@pytest.mark.parametrize(
    ("n_jobs", "n_trials", "cores", "parallel"),
    [
        (None, 50, 2, 2),  # one per core...
        (None, 50, 8, 8),
        (None, 12, 8, 2),  # ...and a worker's start-up paid by at least TRIALS_PER_WORKER trials
        (None, 4, 2, 1),  # a short study is tuned in this process
        (1, 50, 2, 1),
        (2, 3, 8, 2),  # asked for: never more than the cores or the trials
        (4, 50, 2, 2),
        (4, 3, 8, 3),
    ],
)
def test_parallel_trials_never_exceed_the_cores_or_the_trials(
    n_jobs: int | None, n_trials: int, cores: int, parallel: int
) -> None:
    assert tuning.parallel_trials(n_jobs, n_trials, cores) == parallel


@pytest.mark.timeout(60)
def test_a_study_on_a_postgres_server_that_never_answers_fails_within_seconds(tmp_path: Path) -> None:
    """Optuna's storage gets libpq's timeouts: a server that accepts but never answers (a frozen or
    partitioned Postgres) fails the study's first request instead of hanging it (libpq has no timeout)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = silent.getsockname()[1]
        settings = Settings(
            state_dir=tmp_path, training={"optuna_storage": f"postgresql://u:pw@127.0.0.1:{port}/optuna"}
        )
        began = time.monotonic()
        with pytest.raises(OperationalError, match="timeout"):
            tuning.create_study(settings.optuna_storage, "never-answered", seed=0)
        assert time.monotonic() - began < 4 * POSTGRES_CONNECT_ARGS["connect_timeout"]
