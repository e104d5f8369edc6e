"""The trial recorder on a real SQLite tracking store that stops answering (locked by another writer)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from sqlite_lock import sqlite_locked

from adapters import registry, tracking
from embedded.manual import wait_until
from reggaeton import model, tuning
from reggaeton.settings import Settings

LR = model.LOGISTIC_REGRESSION


def _trial(number: int) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        params={tuning.FAMILY_PARAM: LR},
        distributions={tuning.FAMILY_PARAM: CategoricalDistribution([LR])},
        value=0.5,
        user_attrs={
            tuning.FAMILY: LR,
            tuning.PARAMS: {"C": 1.0, model.IMBALANCE: "none"},
            tuning.CV_MEAN: 0.5,
            tuning.CV_STD: 0.1,
            tuning.FOLDS_SCORED: 5,
            tuning.FIT_SECONDS: 0.1,
            tuning.THRESHOLD: 0.3,
        },
    )
    trial.number = number
    return trial


def test_trials_queued_while_a_write_fails_are_skipped_and_recording_resumes(settings: Settings) -> None:
    client = registry.connect(settings)
    experiment = registry.ensure_experiment(client, "recorder", settings)
    parent = client.create_run(experiment).info.run_id
    (database,) = Path(settings.state_dir).rglob("mlflow.db")
    recorder = tracking.TrialRecorder(client, experiment, parent)
    study = optuna.create_study()
    with sqlite_locked(database):  # the store stops answering: MLflow's writes wait 20 s, then fail
        for number in range(6):  # the first write waits on the lock; five trials end meanwhile
            recorder(study, _trial(number))
        wait_until("the first write to fail", lambda: recorder.lost or None, 30, 0.05)
    # The store answers again.
    wait_until("the trials queued meanwhile to be dropped", lambda: recorder.lost == 6 or None, 30, 0.05)
    recorder(study, _trial(6))  # the next trial to end is written: recording resumes
    recorder.close()
    assert (recorder.recorded, recorder.lost, recorder.skipped) == (1, 6, 5)
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert [run.info.run_name for run in children] == ["trial-006"]
