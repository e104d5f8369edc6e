"""A retrain's Optuna study spread over the tuning pool: the ``tune`` deployment and the parent's side.

With ``training.parallel_workers = K`` above 1 the training run (the parent) creates the study in the
shared Optuna storage, enqueues its warm-start trials, stores the rows it tunes on as an artifact of its
MLflow run, and submits up to K runs of the ``tune`` deployment (never more than the tuning pool has
online workers; each worker container serves that pool with ``--limit 1``, so the runs land one per
machine). Each run tunes its quota of trials in the same study and records them under the parent's run.
The parent waits for all of them, fails the trials a crashed run left RUNNING, runs the missing trials
itself, and continues with the study's best trial as before. Without an online tuning worker it tunes
in its own process, as with K = 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

import pandas as pd
from mlflow import MlflowClient
from prefect import flow

from adapters import prefect_api, registry, tracking
from reggaeton import names, tuning
from reggaeton.data import features_array
from reggaeton.schema import FEATURE_NAMES, TARGET
from reggaeton.settings import Settings, TrainingSettings
from reggaeton.study_share import finish_study, split_quotas

logger = logging.getLogger(__name__)

# The training settings a tuning run takes from its parent; the rest (storage, threads, worker name)
# are the worker's own.
SHARED_TRAINING = ("families", "cv_folds", "cv_repeats", "seed", "pruning", "timeout_s")

TopUp = Callable[[int], tuning.TuningResult]


def run_trials(
    config: TrainingSettings,
    frame: pd.DataFrame,
    storage: str,
    study_name: str,
    n_trials: int,
    recorder: tracking.TrialRecorder,
    **options: Any,
) -> tuning.TuningResult:
    """``n_trials`` trials of ``study_name`` on ``frame``'s rows with ``config``'s options, each recorded.

    The one place training settings become a ``tuning.tune`` call: the training run (alone, or topping
    up a spread study) and each tuning run. ``options``: ``tune``'s per-caller ones (progress bar, warm
    start, sampler seed).
    """
    return tuning.tune(
        features_array(frame), frame[TARGET].to_numpy(),
        storage=storage, study_name=study_name, families=config.families, n_trials=n_trials,
        folds=config.cv_folds, repeats=config.cv_repeats, seed=config.seed, n_jobs=config.n_jobs,
        timeout_s=config.timeout_s, callbacks=[recorder], pruning=config.pruning,
        worker=config.worker_name, **options,
    )  # fmt: skip


def tuning_runs(settings: Settings) -> int:
    """How many tuning runs a retrain asks for: ``parallel_workers``, at most the online tuning workers.

    1 (tune in the training run) when no tuning worker is online: a retrain never waits for a pool
    nobody serves.
    """
    wanted = settings.training.parallel_workers
    if wanted <= 1:
        return 1
    with prefect_api.prefect_api(settings):
        online = prefect_api.online_workers(settings.prefect.tuning_pool)
    if not online:
        logger.warning(
            "parallel_workers=%d but no worker of pool %s is online: tuning in this run",
            wanted, settings.prefect.tuning_pool,
        )  # fmt: skip
        return 1
    return min(wanted, len(online))


def _submit(
    settings: Settings, run_id: str, experiment_id: str, study_name: str, quotas: Sequence[int]
) -> list[UUID]:
    shared = settings.training.model_dump(mode="json", include=set(SHARED_TRAINING))
    submitted = []
    for index, quota in enumerate(quotas):
        parameters = {
            "parent_run_id": run_id,
            "experiment_id": experiment_id,
            "study_name": study_name,
            "n_trials": quota,
            "run_index": index,
            "training": shared,
        }
        deployment = f"{names.TUNE_FLOW}/{names.TUNE_DEPLOYMENT}"
        submitted.append(prefect_api.submit_run(deployment, parameters, f"{study_name}-{index}"))
    return submitted


def spread_study(
    client: MlflowClient,
    settings: Settings,
    train: pd.DataFrame,
    ids: tuple[str, str],
    study_name: str,
    runs: int,
    warm_start: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Run the study as ``runs`` tuning runs on the pool and wait for them; cancel them if this fails.

    Args:
        client: The MLflow client.
        settings: The settings.
        train: The rows to tune on (features and target).
        ids: The parent MLflow run's id and its experiment's id.
        study_name: The study, created here in ``settings.optuna_storage``.
        runs: Tuning runs (see ``tuning_runs``).
        warm_start: Trials evaluated first (see ``tuning.warm_start_trials``).
    """
    training = settings.training
    study = tuning.create_study(settings.optuna_storage, study_name, training.seed, pruning=training.pruning)
    for params in warm_start:
        study.enqueue_trial(dict(params), skip_if_exists=True)
    tracking.log_tuning_data(client, ids[0], train[[*FEATURE_NAMES, TARGET]])
    quotas = split_quotas(training.n_trials, runs)
    logger.info(
        "tuning %s as %d runs on pool %s: %s trials",
        study_name,
        len(quotas),
        settings.prefect.tuning_pool,
        quotas,
    )
    submitted: list[UUID] = []
    with prefect_api.prefect_api(settings):
        try:
            submitted = _submit(settings, *ids, study_name, quotas)
            states = prefect_api.wait_for_runs(submitted, training.spread_timeout_s)
        except BaseException:
            prefect_api.cancel_runs(submitted, "its training run failed")
            raise
        late = prefect_api.cancel_runs(submitted, f"not finished after {training.spread_timeout_s:.0f} s")
        if late:
            prefect_api.wait_for_runs(late, 60.0)
    logger.info("tuning runs ended: %s", {str(key): value.value for key, value in states.items()})


def complete_study(storage: str, study_name: str, n_trials: int, top_up: TopUp) -> tuning.TuningResult:
    """Once no run tunes the study: fail its stale RUNNING trials, run the missing ones, return the best.

    A crashed tuning run costs only time: its unfinished trial is failed and its quota run by ``top_up``
    (here, in the training run).
    """
    stale, finished = finish_study(storage, study_name)
    if stale:
        logger.warning("trials %s of %s were left running by a crashed tuning run: failed", stale, study_name)
    missing = n_trials - finished
    if missing > 0:
        logger.info("%d of %d trials finished on the pool; running %d here", finished, n_trials, missing)
        return top_up(missing)
    return tuning.study_result(storage, study_name)


@flow(name=names.TUNE_FLOW)
def tune_study(
    parent_run_id: str,
    experiment_id: str,
    study_name: str,
    n_trials: int,
    run_index: int = 0,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tune ``n_trials`` trials of a retrain's shared study, each recorded under the parent's MLflow run.

    Args:
        parent_run_id: The training run: its ``tracking.TUNING_DATA_ARTIFACT`` holds the rows to tune on.
        experiment_id: Its experiment.
        study_name: The study in the Optuna storage shared with the parent (this worker's settings).
        n_trials: This run's quota.
        run_index: Its place among the parent's runs: its sampler's seed is the study's seed + 1 + it, so
            the runs (and the parent, on the study's seed) do not sample the same points.
        training: The parent's training settings among ``SHARED_TRAINING``.
    """
    settings = Settings()
    merged = {**settings.training.model_dump(), **(training or {})}
    config = TrainingSettings.model_validate(merged)
    client = registry.connect(settings, names.TRAINING_ACCOUNT)
    frame = tracking.load_tuning_data(client, parent_run_id)
    with tracking.TrialRecorder(client, experiment_id, parent_run_id) as recorder:
        seed = config.seed + 1 + run_index
        run_trials(
            config, frame, settings.optuna_storage, study_name, n_trials, recorder,
            progress_bar=False, sampler_seed=seed, shared=True,
        )  # fmt: skip
    return {"study": study_name, "trials": n_trials, "recorded": recorder.recorded}
