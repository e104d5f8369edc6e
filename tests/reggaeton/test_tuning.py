"""Search spaces, cross-validation and the Optuna study on small synthetic data."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from reggaeton import tuning
from reggaeton.data import features_array, synthetic_dataset
from reggaeton.model import IMBALANCE, IMBALANCE_CHOICES, LOGISTIC_REGRESSION
from reggaeton.settings import Settings


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
    result = tuning.cross_validate(chosen, params, X, y, folds=3, repeats=2, seed=0)
    assert chosen == family
    assert len(result.fold_scores) == 6
    assert 0.0 <= result.mean <= 1.0 and result.std >= 0.0
    # PR-AUC of a random ranking is the prior (3 %): every family learns something.
    assert result.mean > 2 * y.mean()
    assert 0.0 < result.threshold < 1.0
    assert result.oof_proba.shape == y.shape


def test_cross_validation_is_deterministic_for_a_seed(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = xy
    params = {"C": 1.0, IMBALANCE: "smote"}
    first = tuning.cross_validate(LOGISTIC_REGRESSION, params, X, y, folds=3, repeats=1, seed=3)
    again = tuning.cross_validate(LOGISTIC_REGRESSION, params, X, y, folds=3, repeats=1, seed=3)
    other = tuning.cross_validate(LOGISTIC_REGRESSION, params, X, y, folds=3, repeats=1, seed=4)
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
