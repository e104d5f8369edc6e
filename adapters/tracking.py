"""MLflow tracking for training: the parent run, one nested run per trial, the evaluation, the version.

Logs through MLflow's fluent API on the tracking store ``registry.connect`` configured in this process.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunInfo, RunStatus
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import OperationalError

from adapters import registry
from reggaeton import names, tuning
from reggaeton.data import Dataset, Split
from reggaeton.metrics import SCORE_METRICS, paired_bootstrap_difference
from reggaeton.schema import TARGET
from reggaeton.settings import Settings, without_password
from reggaeton.training import Candidates, Evaluation, calibration_figure, metric_record, pr_curve_figure

logger = logging.getLogger(__name__)


BASELINE_PREFIX = "baseline_"


BEST_PREFIX = "best."  # the best trial's family and parameters on the parent run


PR_CURVE_ARTIFACT = "plots/precision_recall.png"


CALIBRATION_ARTIFACT = "plots/calibration.png"


# Parameters of the logged model a version points at (shown on its page in the MLflow UI).
MODEL_FAMILY_PARAM = "family"


DATA_SOURCE_PARAM = "data_source"


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
    storage = settings.training.optuna_storage
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
                # Recorded for the reader of the run, never with the database's password.
                "training.optuna_storage": without_password(storage) if storage else storage,
            }
        )
        return run.info


def _trial_record(trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, float], dict[str, str]]:
    """Params, metrics and tags of a finished or pruned trial's nested run."""
    family, params = tuning.trial_family_and_params(trial)
    attrs = trial.user_attrs
    metrics = {
        "cv_pr_auc_mean": attrs[tuning.CV_MEAN],
        "cv_pr_auc_std": attrs[tuning.CV_STD],
        "cv_folds_scored": attrs[tuning.FOLDS_SCORED],
        "cv_seconds": attrs[tuning.FIT_SECONDS],
    }
    if tuning.THRESHOLD in attrs:
        metrics["cv_threshold"] = attrs[tuning.THRESHOLD]
    tags = {TRIAL_STATE_TAG: trial.state.name}
    if tuning.WORKER in attrs:
        tags[names.Tag.WORKER] = str(attrs[tuning.WORKER])
    return {tuning.FAMILY_PARAM: family, **params}, metrics, tags


TRIAL_STATE_TAG = "optuna.state"


class TrialRecorder:
    """An Optuna callback recording each finished or pruned trial as a nested run, off the trials' path.

    The callback only queues the trial; one background thread writes the nested runs (three store
    calls each), so a trial never waits for MLflow and the writes overlap the next trials' fitting.
    ``close`` (or leaving the ``with`` block) waits until every queued trial is written. When MLflow
    fails a write after its client's retries, the trials queued meanwhile are dropped, not tried in turn.
    A pruned trial's run has the mean and spread of the folds it scored (``cv_folds_scored``) and the
    tag ``optuna.state=PRUNED``.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
        self._client, self._experiment_id, self._parent = client, experiment_id, parent_run_id
        self._queue: queue.SimpleQueue[FrozenTrial | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="mlflow-trial-recorder", daemon=True)
        self._thread.start()
        self.recorded = 0
        self.lost = 0  # not recorded: the writes that failed and the trials skipped after one (``skipped``)
        self.skipped = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self._queue.put(trial)

    def __enter__(self) -> TrialRecorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self, timeout_s: float = 120.0) -> None:
        """Write what is queued, then stop the writer thread (bounded wait)."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("trial recorder still writing after %.0f s: some trials may be missing", timeout_s)

    def _drain(self) -> None:
        while (trial := self._queue.get()) is not None:
            if not self._record(trial) and self._skip_queued():
                return

    def _skip_queued(self) -> bool:
        """Drop the trials that ended while a write was failing; True when ``close`` was among them.

        MLflow's client retries a call for minutes before it fails: each queued trial would wait as
        long while the store is still down, and the study's end would wait for all of them. The next
        trial to end is the next try, so recording resumes once the store answers again.
        """
        skipped, closing = 0, False
        with contextlib.suppress(queue.Empty):
            while self._queue.get_nowait() is not None:
                skipped += 1
            closing = True
        if skipped:
            self.lost += skipped
            self.skipped += skipped
            logger.warning("MLflow did not answer: %d trial(s) that ended meanwhile not recorded", skipped)
        return closing

    def _record(self, trial: FrozenTrial) -> bool:
        """Write one trial's nested run; False when the store did not answer (a transient failure)."""
        params, metrics, tags = _trial_record(trial)
        try:
            registry.log_nested_run(
                self._client,
                self._experiment_id,
                self._parent,
                f"trial-{trial.number:03d}",
                params,
                metrics,
                tags,
            )
            self.recorded += 1
        except Exception as error:  # the writer thread must outlive any one failed write
            self.lost += 1
            # A lost trial record must not throw away the study; the parent run keeps the best trial.
            transient = is_transient_error(error)
            level = logging.WARNING if transient else logging.ERROR
            logger.log(level, "could not record trial %d in MLflow: %s", trial.number, error)
            return not transient
        return True


TUNING_DATA_ARTIFACT = "tuning/train.csv"


def log_tuning_data(client: MlflowClient, run_id: str, train: pd.DataFrame) -> None:
    """Store the rows a study tunes on (features + target) on the training run, for its tuning runs.

    They read them from here, never from the data source: with labelled traffic included, the source
    can change between the parent and its tuning runs. CSV keeps every float exactly (shortest repr).
    """
    client.log_text(run_id, train.to_csv(index=False), TUNING_DATA_ARTIFACT)


def load_tuning_data(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """The rows a training run tunes on, as ``log_tuning_data`` stored them."""
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, TUNING_DATA_ARTIFACT, folder)
        return pd.read_csv(Path(path))


def champion_trial(client: MlflowClient, settings: Settings) -> tuple[str, dict[str, Any]] | None:
    """The champion's family and tuned parameters (its training run's ``best.*`` params), or None.

    None also when the champion has no such record (the baseline, an operator's version) or MLflow
    does not answer: a warm start is an optimisation, never a reason to fail a retrain.
    """
    try:
        champion = registry.get_alias(client, settings.mlflow.model_name, names.CHAMPION)
        if champion is None or champion.run_id is None:
            return None
        recorded = client.get_run(champion.run_id).data.params
    except Exception as error:
        if not (is_transient_error(error) or isinstance(error, MlflowException)):
            raise
        logger.warning("no warm start from the champion: %s", error)
        return None
    family = recorded.get(f"{BEST_PREFIX}family")
    if family is None:
        return None
    skip = {f"{BEST_PREFIX}family", f"{BEST_PREFIX}trial"}
    params = {
        key.removeprefix(BEST_PREFIX): _parse_param(value)
        for key, value in recorded.items()
        if key.startswith(BEST_PREFIX) and key not in skip
    }
    return family, params


def _parse_param(value: str) -> Any:
    """A parameter as MLflow stored it (text) back to its Python value: numbers, None, else text."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


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
    """Log the tuned pipeline and its reference set, register a version and point ``challenger`` at it.

    The held-out metrics go on the logged model (the MLflow UI shows them on the version's page); the
    version gets only the few tags code reads (``names.Tag``).
    """
    reference = registry.reference_frame(parts.holdout, tuned.proba, tuned.threshold)
    with mlflow.start_run(run_id=run_id):
        model_info = registry.log_model(tuned.pipeline, parts.holdout, tuned.threshold)
        registry.log_reference(reference)
        registry.log_model_metrics(
            model_info,
            metric_record(tuned),
            {MODEL_FAMILY_PARAM: tuned.name, DATA_SOURCE_PARAM: dataset.source},
        )
    tags = {
        names.Tag.FLOW_RUN_ID: flow_run_id,
        names.Tag.DATA_HASH: dataset.content_hash,
        names.Tag.THRESHOLD: tuned.threshold,
        **_request_tags(request_id),
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
    client = registry.connect(settings, names.TRAINING_ACCOUNT)
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


def log_best_trial(client: MlflowClient, run_id: str, result: tuning.TuningResult) -> None:
    """The study's best trial on the parent run: its family and parameters, its CV scores."""
    client.log_batch(
        run_id,
        params=[
            Param("study_name", result.study_name),
            Param(f"{BEST_PREFIX}family", result.family),
            Param(f"{BEST_PREFIX}trial", str(result.best_trial)),
            Param("trials_pruned", str(result.pruned)),
            *(Param(f"{BEST_PREFIX}{key}", str(value)) for key, value in result.params.items()),
        ],
        metrics=[
            Metric("cv_pr_auc_mean", result.cv_mean, 0, 0),
            Metric("cv_pr_auc_std", result.cv_std, 0, 0),
            Metric("cv_threshold", result.threshold, 0, 0),
        ],
    )
