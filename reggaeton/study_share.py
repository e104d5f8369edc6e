"""One Optuna study shared by several tuning runs: their quotas, and closing the study once they ended.

A retrain with ``training.parallel_workers`` above 1 splits its trials over runs on other workers
(``flows/tune.py``); they all tune the same study in the shared RDB storage. A run that crashed leaves
its trial RUNNING for ever: once every run has ended, ``finish_study`` fails such trials and says how many
trials finished, so the parent can run the missing ones itself.
"""

from __future__ import annotations

from typing import Final

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

# A trial counts towards a study's ``n_trials`` once it is in one of these states.
FINISHED: Final = (TrialState.COMPLETE, TrialState.PRUNED)


def split_quotas(n_trials: int, runs: int) -> list[int]:
    """``n_trials`` split over ``runs`` runs as evenly as possible (no empty quota: fewer runs instead)."""
    runs = max(1, min(runs, n_trials))
    return [n_trials // runs + (index < n_trials % runs) for index in range(runs)]


def finish_study(storage: str | BaseStorage, study_name: str) -> tuple[list[int], int]:
    """Fail the trials a crashed run left RUNNING; return their numbers and the finished trials' count.

    Call it only when no run tunes the study any more: nothing would ever finish those trials.
    """
    rdb = optuna.storages.get_storage(storage)
    study_id = rdb.get_study_id_from_name(study_name)
    stale = rdb.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        rdb.set_trial_state_values(trial_id, TrialState.FAIL)
    return [trial.number for trial in stale], len(
        rdb.get_all_trials(study_id, deepcopy=False, states=FINISHED)
    )
