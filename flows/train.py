"""The ``train`` flow: data -> Optuna tuning -> fit -> held-out evaluation vs the baseline -> challenger.

Each step is a plain function (callable without Prefect, e.g. by ``train``); the flow wraps them in
tasks. Run it against the stack that is up with ``reggaeton train``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import RunInfo
from prefect import Task, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from adapters import registry, tracking, traffic
from flows import tune
from reggaeton import names, tuning
from reggaeton.data import (
    Dataset,
    Split,
    base_rows_for_share,
    keep_rows,
    load_dataset,
    split,
    traffic_rows_for_share,
    with_extra_rows,
)
from reggaeton.model import BASELINE
from reggaeton.settings import Settings
from reggaeton.training import (
    BASELINE_THRESHOLD,
    Candidates,
    Evaluation,
    evaluate_holdout,
    fit_pipeline,
    metric_record,
)

logger = logging.getLogger(__name__)

TRAFFIC_SOURCE = "prediction-log"


P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class TrainingResult:
    """What a training run produced; ``holdout`` is the reference set (features, probability, label)."""

    version: str
    run_id: str
    family: str
    params: dict[str, Any]
    threshold: float
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    data_hash: str
    data_source: str
    holdout: pd.DataFrame


# ---------------------------------------------------------------- steps (plain functions)


def training_data(settings: Settings, extra_training_frame: pd.DataFrame | None = None) -> Dataset:
    """The configured data source plus labelled traffic (given, or read from the prediction log).

    The prediction log is read only when ``data.include_feedback`` is on. The base data keeps at least
    ``data.min_base_share`` of the rows (see ``base_and_traffic``).

    Raises:
        SchemaError: bad data, naming the file, column and row count.
    """
    extra = extra_training_frame
    if extra is None and settings.data.include_feedback:
        extra = traffic.read_labelled_traffic(settings)
    base, extra = base_and_traffic(settings, extra)
    dataset = with_extra_rows(base, extra, TRAFFIC_SOURCE)
    logger.info("training data: %s", dataset.summary())
    return dataset


def base_and_traffic(settings: Settings, extra: pd.DataFrame | None) -> tuple[Dataset, pd.DataFrame | None]:
    """The base data and the traffic to train on, the base data at least ``data.min_base_share`` of both.

    Labelled traffic grows with every week of feedback, and a drift brings mostly songs of the new kind:
    added as it is, it drowns the base data, and the retrained model forgets the songs that are still
    most of the traffic (issue 26: PR-AUC 0.68 -> 0.49 on the original songs). A synthetic base draws
    as many songs as the share needs from the same generator; a folder's songs are what they are, so
    the traffic is sampled down to fit (the same songs each time: by row key).
    """
    data = settings.data
    traffic_rows = 0 if extra is None else len(extra)
    if data.folder is not None:
        base = load_dataset(data.folder, data.synthetic_rows, data.seed)
        cap = traffic_rows_for_share(len(base.frame), data.min_base_share)
        if extra is not None and cap is not None and traffic_rows > cap:
            logger.info(
                "keeping %d of %d labelled traffic rows: the base data stays %.0f %% of the data",
                cap, traffic_rows, 100 * data.min_base_share,
            )  # fmt: skip
            extra = keep_rows(extra, cap, data.seed)
        return base, extra
    rows = max(data.synthetic_rows, base_rows_for_share(traffic_rows, data.min_base_share))
    if rows > data.synthetic_rows:
        logger.info(
            "drawing %d synthetic base rows (not %d): the base data stays %.0f %% of the data",
            rows, data.synthetic_rows, 100 * data.min_base_share,
        )  # fmt: skip
    return load_dataset(None, rows, data.seed), extra


def split_data(settings: Settings, dataset: Dataset) -> Split:
    """Stratified train/held-out split with the configured fraction and seed."""
    return split(dataset, settings.data.holdout_fraction, settings.data.seed)


def tune_candidates(
    client: MlflowClient,
    settings: Settings,
    parts: Split,
    run_id: str,
    experiment_id: str,
    progress_bar: bool = True,
) -> tuning.TuningResult:
    """Run the Optuna study on the training part, one nested run per trial; best params on the parent.

    With ``training.warm_start``, the champion's parameters and the baseline's equivalent are the first
    trials; the nested runs are written by a background thread while the study runs. With
    ``training.parallel_workers`` above 1 the trials run on the tuning pool (``flows.tune``), and what
    they did not finish runs here.
    """
    training = settings.training
    settings.ensure_state_dir()
    champion = tracking.champion_trial(client, settings) if training.warm_start else None
    warm_start = tuning.warm_start_trials(training.families, champion) if training.warm_start else []
    study_name = f"{training.study_name}-{run_id}"
    with tracking.TrialRecorder(client, experiment_id, run_id) as recorder:

        def in_process(n_trials: int) -> tuning.TuningResult:
            return tune.run_trials(
                training, parts.train, settings.optuna_storage, study_name, n_trials, recorder,
                progress_bar=progress_bar, warm_start=warm_start,
            )  # fmt: skip

        runs = tune.tuning_runs(settings)
        if runs > 1:
            ids = (run_id, experiment_id)
            tune.spread_study(client, settings, parts.train, ids, study_name, runs, warm_start)
            result = tune.complete_study(settings.optuna_storage, study_name, training.n_trials, in_process)
        else:
            result = in_process(training.n_trials)
    tracking.log_best_trial(client, run_id, result)
    return result


def fit_and_evaluate(settings: Settings, parts: Split, tuned: tuning.TuningResult) -> Candidates:
    """Refit the best trial and the baseline on the training part; score both on the held-out part."""
    seed, rounds = settings.training.seed, settings.training.bootstrap_rounds
    candidate = fit_pipeline(tuned.family, tuned.params, parts.train, seed)
    baseline = fit_pipeline(BASELINE, {}, parts.train, seed=0)
    return Candidates(
        tuned=evaluate_holdout(
            tuned.family, candidate, parts.holdout, tuned.threshold, rounds=rounds, seed=seed
        ),
        baseline=evaluate_holdout(
            BASELINE, baseline, parts.holdout, BASELINE_THRESHOLD, rounds=rounds, seed=seed
        ),
    )


def _result(
    version: str,
    run_id: str,
    dataset: Dataset,
    parts: Split,
    tuned: tuning.TuningResult,
    candidates: Candidates,
) -> TrainingResult:
    best = candidates.tuned
    return TrainingResult(
        version=version,
        run_id=run_id,
        family=tuned.family,
        params=tuned.params,
        threshold=best.threshold,
        metrics=metric_record(best),
        baseline_metrics=metric_record(candidates.baseline),
        data_hash=dataset.content_hash,
        data_source=dataset.source,
        holdout=registry.reference_frame(parts.holdout, best.proba, best.threshold),
    )


@dataclass(frozen=True)
class Steps:
    """The training steps, as plain functions (``train``) or as Prefect tasks (``train_flow``)."""

    load_data: Callable[[Settings, pd.DataFrame | None], Dataset]
    split: Callable[[Settings, Dataset], Split]
    start_run: Callable[[MlflowClient, Settings, Dataset, Split, str, str | None], RunInfo]
    tune: Callable[[MlflowClient, Settings, Split, str, str, bool], tuning.TuningResult]
    evaluate: Callable[[Settings, Split, tuning.TuningResult], Candidates]
    log_evaluation: Callable[[Settings, str, Split, Candidates], None]
    register: Callable[[MlflowClient, Settings, str, Split, Dataset, Evaluation, str, str | None], str]
    end_run: Callable[[MlflowClient, str, bool], None]
    # Once, without the MLflow steps' retries: when MLflow did not answer a step after its client's and
    # Prefect's retries (minutes), retrying to mark the run failed would only delay the failure.
    fail_run: Callable[[MlflowClient, str, bool], None]


PLAIN_STEPS = Steps(
    load_data=training_data,
    split=split_data,
    start_run=tracking.start_training_run,
    tune=tune_candidates,
    evaluate=fit_and_evaluate,
    log_evaluation=tracking.log_evaluation,
    register=tracking.register_challenger,
    end_run=tracking.end_training_run,
    fail_run=tracking.end_training_run,
)


def run_steps(
    steps: Steps,
    settings: Settings,
    extra_training_frame: pd.DataFrame | None,
    *,
    flow_run_id: str,
    request_id: str | None,
    progress_bar: bool,
) -> TrainingResult:
    """Data -> split -> parent run -> tuning -> fit and evaluate -> register; the run is closed either way."""
    dataset = steps.load_data(settings, extra_training_frame)
    parts = steps.split(settings, dataset)
    client = registry.connect(
        settings, names.TRAINING_ACCOUNT
    )  # also points MLflow's fluent API at the store, for every step
    run = steps.start_run(client, settings, dataset, parts, flow_run_id, request_id)
    run_id = run.run_id
    try:
        tuned = steps.tune(client, settings, parts, run_id, run.experiment_id, progress_bar)
        candidates = steps.evaluate(settings, parts, tuned)
        steps.log_evaluation(settings, run_id, parts, candidates)
        version = steps.register(
            client, settings, run_id, parts, dataset, candidates.tuned, flow_run_id, request_id
        )
    except BaseException:
        try:
            steps.fail_run(client, run_id, True)
        except Exception as error:  # MLflow down: the step's own error is the one to raise
            logger.warning("training run %s could not be marked failed: %s", run_id, error)
        raise
    steps.end_run(client, run_id, False)
    return _result(version, run_id, dataset, parts, tuned, candidates)


def train(
    settings: Settings,
    extra_training_frame: pd.DataFrame | None = None,
    *,
    flow_run_id: str = "none",
    request_id: str | None = None,
    progress_bar: bool = False,
) -> TrainingResult:
    """Train, evaluate and register a challenger without Prefect (the flow runs the same steps as tasks).

    Args:
        settings: The system's settings.
        extra_training_frame: Labelled rows to add to the data (features + target); when None, the
            prediction log's labelled traffic is used if ``data.include_feedback`` is on.
        flow_run_id: Recorded on the run and the version (the calling flow run, if any).
        request_id: The retrain request this run serves (see ``tracking.resume_request``), recorded on the run
            and the version.
        progress_bar: Show Optuna's progress bar.
    """
    return run_steps(
        PLAIN_STEPS,
        settings,
        extra_training_frame,
        flow_run_id=flow_run_id,
        request_id=request_id,
        progress_bar=progress_bar,
    )


# ---------------------------------------------------------------- Prefect tasks and flow


def _is_transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry only when the tracking server (or its database) did not answer."""
    try:
        state.result()
    except Exception as error:
        return tracking.is_transient_error(error)
    return False


def _mlflow_task(fn: Callable[P, R], name: str) -> Task[P, R]:
    return task(
        name=name,
        retries=3,
        retry_delay_seconds=[2, 5, 10],
        retry_condition_fn=_is_transient,
        cache_policy=NO_CACHE,
    )(fn)


def _task(fn: Callable[P, R], name: str) -> Task[P, R]:
    return task(name=name, cache_policy=NO_CACHE)(fn)


TASK_STEPS = Steps(
    load_data=_task(training_data, "load-data"),
    split=_task(split_data, "split-data"),
    start_run=_mlflow_task(tracking.start_training_run, "start-mlflow-run"),
    tune=_task(tune_candidates, "tune"),
    evaluate=_task(fit_and_evaluate, "fit-and-evaluate"),
    log_evaluation=_mlflow_task(tracking.log_evaluation, "log-evaluation"),
    register=_mlflow_task(tracking.register_challenger, "register-challenger"),
    end_run=_mlflow_task(tracking.end_training_run, "end-mlflow-run"),
    fail_run=_task(tracking.end_training_run, "fail-mlflow-run"),
)
resume_task = _mlflow_task(tracking.resume_request, "resume-request")


def with_overrides(
    settings: Settings,
    data_folder: str | None = None,
    n_trials: int | None = None,
    parallel_workers: int | None = None,
) -> Settings:
    """Settings with the flow's command-line/deployment overrides applied (None: keep the setting)."""
    data = (
        settings.data
        if data_folder is None
        else settings.data.model_copy(update={"folder": Path(data_folder)})
    )
    updates = {"n_trials": n_trials, "parallel_workers": parallel_workers}
    training = settings.training.model_validate(
        {
            **settings.training.model_dump(),
            **{key: value for key, value in updates.items() if value is not None},
        }
    )
    return settings.model_copy(update={"data": data, "training": training})


@flow(name="train")
def train_flow(
    data_folder: str | None = None,
    n_trials: int | None = None,
    settings: Settings | None = None,
    request_id: str | None = None,
    parallel_workers: int | None = None,
) -> int:
    """Tune, fit, evaluate and register a challenger version; return its version number.

    ``request_id`` (the retrain request, see ``tracking.resume_request``) is recorded on the run and
    the version; ``parallel_workers`` overrides ``training.parallel_workers``.
    """
    settings = with_overrides(settings or Settings(), data_folder, n_trials, parallel_workers)
    result = run_steps(
        TASK_STEPS, settings, None, flow_run_id=str(flow_run.id), request_id=request_id, progress_bar=True
    )
    return int(result.version)
