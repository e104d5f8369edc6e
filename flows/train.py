"""The ``train`` flow: data -> Optuna tuning -> fit -> held-out evaluation vs the baseline -> challenger.

Each step is a plain function (callable without Prefect, e.g. by ``train``); the flow wraps them in
tasks. Run it against the local stack with ``python -m flows.train``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import mlflow
import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunInfo, RunStatus
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial
from prefect import Task, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from sqlalchemy.exc import OperationalError

from adapters import registry, traffic
from adapters.prefect_api import prefect_api
from reggaeton import names, tuning
from reggaeton.data import Dataset, Split, features_array, load_dataset, split, with_extra_rows
from reggaeton.metrics import SCORE_METRICS, paired_bootstrap_difference
from reggaeton.model import BASELINE
from reggaeton.schema import TARGET
from reggaeton.settings import Settings
from reggaeton.training import (
    BASELINE_THRESHOLD,
    Evaluation,
    calibration_figure,
    evaluate_holdout,
    fit_pipeline,
    metric_record,
    pr_curve_figure,
)

logger = logging.getLogger(__name__)

TRAFFIC_SOURCE = "prediction-log"
BASELINE_PREFIX = "baseline_"
PR_CURVE_ARTIFACT = "plots/precision_recall.png"
CALIBRATION_ARTIFACT = "plots/calibration.png"
# MLflow error codes that mean "try again later".
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})


def is_transient_error(error: BaseException) -> bool:
    """Whether a failure is worth a retry: the tracking server or its database did not answer."""
    if isinstance(error, OSError | TimeoutError | OperationalError):
        return True
    if isinstance(error, MlflowException):
        # MLflow's REST client wraps connection failures and timeouts in this message.
        return error.error_code in _TRANSIENT_CODES or str(error.message).startswith("API request to")
    return False


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


@dataclass(frozen=True)
class Candidates:
    """The tuned model and the baseline, evaluated on the same held-out rows."""

    tuned: Evaluation
    baseline: Evaluation


# ---------------------------------------------------------------- steps (plain functions)


def training_data(settings: Settings, extra_training_frame: pd.DataFrame | None = None) -> Dataset:
    """The configured data source plus labelled traffic (given, or read from the prediction log).

    The prediction log is read only when ``data.include_feedback`` is on.

    Raises:
        SchemaError: bad data, naming the file, column and row count.
    """
    base = load_dataset(settings.data.folder, settings.data.synthetic_rows, settings.data.seed)
    extra = extra_training_frame
    if extra is None and settings.data.include_feedback:
        extra = traffic.read_labelled_traffic(settings)
    dataset = with_extra_rows(base, extra, TRAFFIC_SOURCE)
    logger.info("training data: %s", dataset.summary())
    return dataset


def split_data(settings: Settings, dataset: Dataset) -> Split:
    """Stratified train/held-out split with the configured fraction and seed."""
    return split(dataset, settings.data.holdout_fraction, settings.data.seed)


def _request_tags(request_id: str | None) -> dict[str, str]:
    return {} if request_id is None else {names.Tag.RETRAIN_REQUEST: request_id}


def start_training_run(
    client: MlflowClient,
    settings: Settings,
    dataset: Dataset,
    parts: Split,
    flow_run_id: str,
    request_id: str | None = None,
) -> RunInfo:
    """Open the parent MLflow run: data input, data and training settings as params; return its info."""
    experiment_id = registry.ensure_experiment(client, settings.mlflow.training_experiment, settings)
    tags = {
        names.Tag.FLOW_RUN_ID: flow_run_id,
        names.Tag.DATA_HASH: dataset.content_hash,
        names.Tag.DATA_SOURCE: dataset.source,
        **_request_tags(request_id),
    }
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        registry.log_dataset(dataset)
        mlflow.log_params(
            {
                "data.rows": len(dataset.frame),
                "data.positives": int(dataset.y.sum()),
                "data.dropped_rows": dataset.dropped_rows,
                "data.train_rows": len(parts.train),
                "data.holdout_rows": len(parts.holdout),
                "data.seed": settings.data.seed,
                **{f"training.{k}": v for k, v in settings.training.model_dump().items()},
            }
        )
        return run.info


def trial_logger(
    client: MlflowClient, experiment_id: str, parent_run_id: str
) -> Callable[[optuna.Study, FrozenTrial], None]:
    """An Optuna callback recording each finished trial as a nested run (params, CV mean and spread)."""

    def _log(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.value is None:
            return
        family, params = tuning.trial_family_and_params(trial)
        try:
            registry.log_nested_run(
                client,
                experiment_id,
                parent_run_id,
                run_name=f"trial-{trial.number:03d}",
                params={tuning.FAMILY_PARAM: family, **params},
                metrics={
                    "cv_pr_auc_mean": trial.value,
                    "cv_pr_auc_std": trial.user_attrs[tuning.CV_STD],
                    "cv_threshold": trial.user_attrs[tuning.THRESHOLD],
                    "cv_seconds": trial.user_attrs[tuning.FIT_SECONDS],
                },
            )
        except Exception as error:
            if not is_transient_error(error):
                raise
            # A lost trial record must not throw away the study; the parent run keeps the best trial.
            logger.warning("could not record trial %d of %s in MLflow", trial.number, study.study_name)

    return _log


def tune_candidates(
    client: MlflowClient,
    settings: Settings,
    parts: Split,
    run_id: str,
    experiment_id: str,
    progress_bar: bool = True,
) -> tuning.TuningResult:
    """Run the Optuna study on the training part, one nested run per trial; best params on the parent."""
    training = settings.training
    settings.ensure_state_dir()
    result = tuning.tune(
        features_array(parts.train),
        parts.train[TARGET].to_numpy(),
        storage=settings.optuna_storage,
        study_name=f"{training.study_name}-{run_id}",
        families=training.families,
        n_trials=training.n_trials,
        folds=training.cv_folds,
        repeats=training.cv_repeats,
        seed=training.seed,
        n_jobs=training.n_jobs,
        timeout_s=training.timeout_s,
        callbacks=[trial_logger(client, experiment_id, run_id)],
        progress_bar=progress_bar,
    )
    client.log_batch(
        run_id,
        params=[
            Param("study_name", result.study_name),
            Param("best.family", result.family),
            Param("best.trial", str(result.best_trial)),
            *(Param(f"best.{key}", str(value)) for key, value in result.params.items()),
        ],
        metrics=[
            Metric("cv_pr_auc_mean", result.cv_mean, 0, 0),
            Metric("cv_pr_auc_std", result.cv_std, 0, 0),
            Metric("cv_threshold", result.threshold, 0, 0),
        ],
    )
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


def log_evaluation(settings: Settings, run_id: str, parts: Split, candidates: Candidates) -> None:
    """Held-out metrics of both models (with intervals), their paired PR-AUC difference, and the plots.

    Logs through MLflow's fluent API, on the tracking store ``registry.connect`` configured.
    """
    y_true = parts.holdout[TARGET].to_numpy()
    gain = paired_bootstrap_difference(
        y_true,
        candidates.baseline.proba,
        candidates.tuned.proba,
        SCORE_METRICS["pr_auc"],
        settings.training.bootstrap_rounds,
        settings.training.seed,
    )
    evaluations = [candidates.tuned, candidates.baseline]
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                **metric_record(candidates.tuned),
                **metric_record(candidates.baseline, BASELINE_PREFIX),
                "pr_auc_gain_vs_baseline": gain.estimate,
                "pr_auc_gain_vs_baseline_low": gain.low,
                "pr_auc_gain_vs_baseline_high": gain.high,
            }
        )
        mlflow.log_figure(pr_curve_figure(y_true, evaluations), PR_CURVE_ARTIFACT)
        mlflow.log_figure(calibration_figure(y_true, evaluations), CALIBRATION_ARTIFACT)


def register_challenger(
    client: MlflowClient,
    settings: Settings,
    run_id: str,
    parts: Split,
    dataset: Dataset,
    tuned: Evaluation,
    flow_run_id: str,
    request_id: str | None = None,
) -> str:
    """Log the tuned pipeline and its reference set, register a version and point ``challenger`` at it."""
    reference = registry.reference_frame(parts.holdout, tuned.proba, tuned.threshold)
    with mlflow.start_run(run_id=run_id):
        model_info = registry.log_model(tuned.pipeline, parts.holdout, tuned.threshold)
        reference_uri = registry.log_reference(reference)
    tags = {
        names.Tag.FLOW_RUN_ID: flow_run_id,
        names.Tag.DATA_HASH: dataset.content_hash,
        names.Tag.DATA_SOURCE: dataset.source,
        names.Tag.THRESHOLD: tuned.threshold,
        names.Tag.MODEL_FAMILY: tuned.name,
        names.Tag.REFERENCE_URI: reference_uri,
        **_request_tags(request_id),
        **{f"{names.Tag.METRIC_PREFIX}{key}": value for key, value in metric_record(tuned).items()},
    }
    version = registry.register(client, model_info, settings.mlflow.model_name, tags)
    client.set_registered_model_alias(settings.mlflow.model_name, names.CHALLENGER, version.version)
    logger.info(
        "registered %s version %s as %s", settings.mlflow.model_name, version.version, names.CHALLENGER
    )
    return str(version.version)


def end_training_run(client: MlflowClient, run_id: str, failed: bool = False) -> None:
    """Mark the parent run finished (or failed)."""
    status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
    client.set_terminated(run_id, status)


def resume_request(settings: Settings, request_id: str) -> str | None:
    """What earlier attempts of a retrain request left behind, tidied; the version one registered.

    A flow run killed mid-training (its worker stopped, the machine rebooted) leaves a training run
    that looks finished (each step closes the run it reopens) and may already have registered its
    version; the rerun of that request shares its request id. Training runs of the request that
    registered nothing and did not fail are marked killed. When a version exists, ``challenger``
    points at it again and its number is returned: the rerun gates it rather than registering a
    second version for the same request.
    """
    client = registry.connect(settings)
    model_name = settings.mlflow.model_name
    found = client.search_model_versions(
        f"name='{model_name}' and tags.`{names.Tag.RETRAIN_REQUEST}` = '{request_id}'"
    )
    registered = sorted(found, key=lambda version: int(version.version))
    experiment = client.get_experiment_by_name(settings.mlflow.training_experiment)
    if experiment is not None:
        attempts = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{names.Tag.RETRAIN_REQUEST}` = '{request_id}'"
        )
        kept = {version.run_id for version in registered}
        done = {RunStatus.to_string(RunStatus.FAILED), RunStatus.to_string(RunStatus.KILLED)}
        for run in attempts:
            if run.info.run_id not in kept and run.info.status not in done:
                client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
                logger.info("training run %s of an interrupted attempt marked killed", run.info.run_id)
    if not registered:
        return None
    version = str(registered[0].version)
    client.set_registered_model_alias(model_name, names.CHALLENGER, version)
    logger.info("retrain request %s already registered version %s: gating it again", request_id, version)
    return version


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


PLAIN_STEPS = Steps(
    load_data=training_data,
    split=split_data,
    start_run=start_training_run,
    tune=tune_candidates,
    evaluate=fit_and_evaluate,
    log_evaluation=log_evaluation,
    register=register_challenger,
    end_run=end_training_run,
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
    client = registry.connect(settings)  # also points MLflow's fluent API at the store, for every step
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
        steps.end_run(client, run_id, True)
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
        request_id: The retrain request this run serves (see ``resume_request``), recorded on the run
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
        return is_transient_error(error)
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
    start_run=_mlflow_task(start_training_run, "start-mlflow-run"),
    tune=_task(tune_candidates, "tune"),
    evaluate=_task(fit_and_evaluate, "fit-and-evaluate"),
    log_evaluation=_mlflow_task(log_evaluation, "log-evaluation"),
    register=_mlflow_task(register_challenger, "register-challenger"),
    end_run=_mlflow_task(end_training_run, "end-mlflow-run"),
)
resume_task = _mlflow_task(resume_request, "resume-request")


def with_overrides(
    settings: Settings, data_folder: str | None = None, n_trials: int | None = None
) -> Settings:
    """Settings with the flow's command-line/deployment overrides applied."""
    data = (
        settings.data
        if data_folder is None
        else settings.data.model_copy(update={"folder": Path(data_folder)})
    )
    training = (
        settings.training if n_trials is None else settings.training.model_copy(update={"n_trials": n_trials})
    )
    return settings.model_copy(update={"data": data, "training": training})


@flow(name="train")
def train_flow(
    data_folder: str | None = None,
    n_trials: int | None = None,
    settings: Settings | None = None,
    request_id: str | None = None,
) -> int:
    """Tune, fit, evaluate and register a challenger version; return its version number.

    ``request_id`` (the retrain request, see ``resume_request``) is recorded on the run and the version.
    """
    settings = with_overrides(settings or Settings(), data_folder, n_trials)
    result = run_steps(
        TASK_STEPS, settings, None, flow_run_id=str(flow_run.id), request_id=request_id, progress_bar=True
    )
    return int(result.version)


def main(argv: list[str] | None = None) -> None:
    """Run the train flow against the local stack (the Prefect server from the settings)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-folder", help="folder in the original CSV layout (default: synthetic sample)")
    parser.add_argument("--n-trials", type=int, help="Optuna trials (default: from settings)")
    args = parser.parse_args(argv)
    # Importing Prefect configures the root logger (WARNING); this entry point reports at INFO.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar shows the trials
    settings = Settings()
    # An explicit PREFECT_API_URL wins; otherwise the local stack's server from the settings.
    with prefect_api(settings, keep_configured=True):
        version = train_flow(data_folder=args.data_folder, n_trials=args.n_trials, settings=settings)
    logger.info("challenger version: %s", version)


if __name__ == "__main__":
    main()
