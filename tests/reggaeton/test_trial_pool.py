"""Trials scored in worker processes: the same scores as in this process, pruning, errors, a dead worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from reggaeton import tuning
from reggaeton.data import features_array, synthetic_dataset
from reggaeton.folds import Folds
from reggaeton.model import HIST_GRADIENT_BOOSTING, IMBALANCE, LOGISTIC_REGRESSION
from reggaeton.trial_pool import TrialPool, WorkerDied

OPTIONS = {"folds": 3, "repeats": 1, "seed": 4}
HGB = {"max_iter": 30, "max_leaf_nodes": 8, IMBALANCE: "class_weight"}


@pytest.fixture(scope="module")
def xy() -> tuple[np.ndarray, np.ndarray]:
    data = synthetic_dataset(600, seed=9)
    return features_array(data.frame), data.y.to_numpy()


@pytest.fixture(scope="module")
def pool(xy: tuple[np.ndarray, np.ndarray]) -> Iterator[TrialPool]:
    with TrialPool(tuning.cross_validate, *xy, processes=2, **OPTIONS) as started:
        yield started


def test_a_worker_scores_a_trial_as_this_process_does_fold_by_fold(
    pool: TrialPool, xy: tuple[np.ndarray, np.ndarray]
) -> None:
    reported: list[tuple[int, tuple[float, ...]]] = []
    remote = pool.evaluate(HIST_GRADIENT_BOOSTING, HGB, lambda *report: reported.append(report))
    local = tuning.cross_validate(HIST_GRADIENT_BOOSTING, HGB, Folds(*xy, **OPTIONS), OPTIONS["seed"])
    assert remote.fold_scores == local.fold_scores
    assert remote.threshold == local.threshold
    np.testing.assert_array_equal(remote.oof_proba, local.oof_proba)
    assert reported == [(index, local.fold_scores[: index + 1]) for index in range(3)]


def test_a_report_that_raises_stops_the_trial_and_the_worker_takes_the_next_one(pool: TrialPool) -> None:
    class Pruned(Exception):
        pass

    def prune_after_two(index: int, _scores: tuple[float, ...]) -> None:
        if index == 1:
            raise Pruned

    for _ in range(3):  # more trials than workers: each worker stopped, then reused
        with pytest.raises(Pruned):
            pool.evaluate(LOGISTIC_REGRESSION, {"C": 1.0}, prune_after_two)
    assert len(pool.evaluate(LOGISTIC_REGRESSION, {"C": 1.0}, None).fold_scores) == 3


def test_an_error_in_a_worker_is_raised_here_with_its_traceback(pool: TrialPool) -> None:
    with pytest.raises(RuntimeError, match="unknown model family 'svm'"):
        pool.evaluate("svm", {}, None)
    assert pool.evaluate(LOGISTIC_REGRESSION, {"C": 0.5}, None).mean > 0


def test_a_killed_worker_fails_its_trial_instead_of_hanging(xy: tuple[np.ndarray, np.ndarray]) -> None:
    with TrialPool(tuning.cross_validate, *xy, processes=1, **OPTIONS) as lone:

        def kill_the_worker(index: int, _scores: tuple[float, ...]) -> None:
            if index == 0:
                for pid in lone.pids:
                    os.kill(pid, signal.SIGKILL)

        with pytest.raises(WorkerDied, match="ended while scoring"):
            lone.evaluate(LOGISTIC_REGRESSION, {"C": 1.0}, kill_the_worker)
