"""One study shared by several tuning runs: quotas, the stale trials of a crashed run, the best trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from reggaeton import tuning
from reggaeton.data import features_array, synthetic_dataset
from reggaeton.model import LOGISTIC_REGRESSION
from reggaeton.study_share import FINISHED, finish_study, split_quotas


@pytest.mark.parametrize(
    ("n_trials", "runs", "quotas"),
    [(6, 2, [3, 3]), (7, 3, [3, 2, 2]), (2, 5, [1, 1]), (5, 1, [5]), (1, 0, [1])],
)
def test_trials_are_split_evenly_and_no_run_gets_an_empty_quota(
    n_trials: int, runs: int, quotas: list[int]
) -> None:
    assert split_quotas(n_trials, runs) == quotas


def _tune(
    storage: str, name: str, n_trials: int, worker: str, sampler_seed: int | None = None
) -> tuning.TuningResult:
    data = synthetic_dataset(400, seed=3)
    return tuning.tune(
        features_array(data.frame), data.y.to_numpy(), storage=storage, study_name=name,
        families=[LOGISTIC_REGRESSION], n_trials=n_trials, folds=2, repeats=1, seed=1, n_jobs=1,
        progress_bar=False, worker=worker, sampler_seed=sampler_seed,
    )  # fmt: skip


def test_a_crashed_runs_trial_is_failed_and_the_best_is_read_back_from_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuned = _tune(storage, "shared", 3, worker="box-a")
    # A run that crashed mid-trial leaves it RUNNING: nothing will ever finish it.
    crashed = optuna.load_study(study_name="shared", storage=storage).ask()

    stale, finished = finish_study(storage, "shared")

    assert stale == [crashed.number] and finished == 3
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert trials[crashed.number].state == TrialState.FAIL
    assert sum(trial.state in FINISHED for trial in trials) == 3
    assert {trial.user_attrs[tuning.WORKER] for trial in trials if trial.state in FINISHED} == {"box-a"}
    assert finish_study(storage, "shared") == ([], 3)  # nothing left to fail
    result = tuning.study_result(storage, "shared")
    assert (result.best_trial, result.cv_mean, result.params) == (
        tuned.best_trial,
        tuned.cv_mean,
        tuned.params,
    )
    assert result.n_trials == 4 and np.isfinite(result.threshold)


def test_runs_sharing_a_study_with_their_own_sampler_seeds_sample_different_points(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for run in range(2):  # as two tuning runs of one retrain (flows.tune: seed + 1 + run index)
        _tune(storage, "shared", 3, worker=f"box-{run}", sampler_seed=2 + run)
    points = [
        tuple(sorted(t.params.items()))
        for t in optuna.load_study(study_name="shared", storage=storage).trials
    ]
    assert len(points) == 6 and len(set(points)) == 6
