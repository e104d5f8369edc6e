"""MLflow adapter: tracking set-up, model logging and registration, aliases, the reference set.

The registry contract (see the design): one registered model, aliases ``champion``/``challenger``,
every version tagged with its flow run, data hash and threshold, its held-out metrics on its logged model
(MLflow 3 shows them on the model and on each version), and its training run holding the reference set
at ``names.REFERENCE_ARTIFACT``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from reggaeton import names
from reggaeton.data import Dataset, provenance_or_base
from reggaeton.schema import FEATURE_NAMES, OBSERVED_AT, PREDICTION, PROBABILITY, SOURCE, TARGET
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

# Types the skops loader must trust for our pipelines: imbalanced-learn is not in skops' default list,
# and the tree node stores (random forest, gradient boosting, histogram boosting) are trusted only on
# request because a crafted file could index out of bounds. We load only models we trained ourselves.
SKOPS_TRUSTED_TYPES = [
    "imblearn.pipeline.Pipeline",
    "imblearn.over_sampling._smote.base.SMOTE",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.utils._bunch.Bunch",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # A fitted SMOTE keeps its nearest-neighbour index (a KD or ball tree on larger data).
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
]


# What the registered model is, for the MLflow UI (set once, when its first version is registered).
MODEL_DESCRIPTION = (
    "Says whether a song is reggaeton from seven Spotify audio features (danceability, energy, speechiness, "
    "acousticness, valence, tempo, loudness). The `champion` alias is what the API serves; `challenger` is "
    "the latest trained version; each version's description holds the last decision about it and why."
)


def connect(settings: Settings, account: str | None = None) -> MlflowClient:
    """Point MLflow at the configured tracking store and registry and return a client.

    Args:
        settings: The settings.
        account: The MLflow account this process acts as from now on (one of names.MLFLOW_ACCOUNTS):
            when the settings hold its password, MLflow's client authenticates with it (its standard
            MLFLOW_TRACKING_USERNAME/PASSWORD, read at every request). Without one, whatever the process
            already has is kept (an open server; the operator's own credentials).
    """
    if settings.tracking_uri.startswith("sqlite:"):
        settings.ensure_state_dir()
    password = settings.mlflow.account_password(account) if account is not None else None
    if account is not None and password is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = account
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password.get_secret_value()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def ensure_experiment(client: MlflowClient, name: str, settings: Settings) -> str:
    """The id of an experiment, created (with the local artifact root for a file store) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    # A tracking server decides artifact locations itself; a database store needs one.
    location = None if settings.tracking_uri.startswith("http") else f"{settings.artifact_root}/{name}"
    return str(client.create_experiment(name, artifact_location=location))


# What a logged pipeline needs to load. Declared, because MLflow's inference loads the model in a
# subprocess (seconds per logged model) only to find these same packages.
MODEL_REQUIREMENTS = ("scikit-learn", "imbalanced-learn", "skops", "numpy")


def pip_requirements() -> list[str]:
    """The model's requirements pinned to the versions installed here (the ones it was trained with)."""
    return [f"{package}=={importlib.metadata.version(package)}" for package in MODEL_REQUIREMENTS]


# MLflow's SQL stores keep at most 36 characters of a dataset digest.
DIGEST_LENGTH = 32


def log_dataset(dataset: Dataset, context: str = "training") -> None:
    """Record the training data as a dataset input of the active run, its digest the content hash."""
    mlflow.log_input(
        from_pandas(
            dataset.frame,
            source=dataset.source,
            targets=TARGET,
            name="reggaeton-songs",
            digest=dataset.content_hash[:DIGEST_LENGTH],
        ),
        context=context,
    )


def log_nested_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str] | None = None,
) -> str:
    """A finished child run of ``parent_run_id`` with params, metrics and tags, in three store calls.

    Uses the client, not the fluent API, so it is safe from Optuna's worker threads (the fluent
    active-run stack is per thread).
    """
    run = client.create_run(
        experiment_id, tags={**(tags or {}), MLFLOW_PARENT_RUN_ID: parent_run_id}, run_name=run_name
    )
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in params.items()],
    )
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def log_model(pipeline: Any, example: pd.DataFrame, threshold: float) -> ModelInfo:
    """Log a fitted pipeline to the active run with signature and input example.

    The signature names the seven features; the pipeline itself is fitted on arrays in schema order.
    """
    features = example[list(FEATURE_NAMES)]
    proba = pipeline.predict_proba(features.to_numpy(dtype=float))[:, 1]
    signature = infer_signature(features, pd.Series(proba, name=PROBABILITY))
    return mlflow.sklearn.log_model(
        pipeline,
        name=names.MODEL_ARTIFACT_NAME,
        signature=signature,
        input_example=features.head(2),
        pyfunc_predict_fn="predict_proba",
        metadata={"threshold": threshold, "features": list(FEATURE_NAMES)},
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        pip_requirements=pip_requirements(),
    )


def reference_frame(holdout: pd.DataFrame, proba: Any, threshold: float) -> pd.DataFrame:
    """The reference set: held-out features, probability, prediction, true label and each row's provenance.

    Monitoring compares traffic with it (features, probability, prediction, label); the gate reads each
    row's ``SOURCE`` (base data or traffic) and ``OBSERVED_AT`` (a traffic row's prediction time) for its
    slices. Rows without a recorded provenance count as base data.
    """
    frame = holdout[list(FEATURE_NAMES)].copy()
    frame[PROBABILITY] = proba
    frame[PREDICTION] = (frame[PROBABILITY] >= threshold).astype("int64")
    frame[TARGET] = holdout[TARGET].astype("int64").to_numpy()
    provenance = provenance_or_base(holdout)
    frame[SOURCE] = provenance[SOURCE]
    frame[OBSERVED_AT] = provenance[OBSERVED_AT]  # same index: aligned, tz-aware kept
    return frame.reset_index(drop=True)


def log_reference(reference: pd.DataFrame) -> str:
    """Write the reference set as a parquet artifact of the active run; return its artifact URI."""
    artifact_dir, filename = names.REFERENCE_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=artifact_dir)
    return mlflow.get_artifact_uri(names.REFERENCE_ARTIFACT)


def register(
    client: MlflowClient, model_info: ModelInfo, model_name: str, tags: Mapping[str, Any]
) -> ModelVersion:
    """Register a logged model as a new version of ``model_name`` with string tags.

    The tags are part of the one call that creates the version: a process killed mid-registration
    leaves either no version or a fully tagged one, which is what lets a rerun find it.
    """
    version = mlflow.register_model(
        model_info.model_uri, model_name, tags={key: str(value) for key, value in tags.items()}
    )
    if not client.get_registered_model(model_name).description:
        client.update_registered_model(model_name, description=MODEL_DESCRIPTION)
    return client.get_model_version(model_name, version.version)


def log_model_metrics(model_info: ModelInfo, metrics: Mapping[str, float], params: Mapping[str, Any]) -> None:
    """Metrics and parameters on a logged model, where MLflow 3 shows them (in the active run).

    A model logged in a run already holds the run's step-0 metrics (MLflow copies them): only the
    figures it lacks are added, so none is listed twice on its page.
    """
    present = {metric.key for metric in MlflowClient().get_logged_model(model_info.model_id).metrics or []}
    missing = {key: float(value) for key, value in metrics.items() if key not in present}
    if missing:
        mlflow.log_metrics(missing, model_id=model_info.model_id)
    mlflow.log_model_params({key: str(value) for key, value in params.items()}, model_id=model_info.model_id)


def version_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    """A version's own held-out metrics: its logged model's, else the tags older versions carry.

    One registry request (the logged model); read it when a version is loaded or shown, not per request.
    """
    model_id = logged_model_id(version)
    if model_id:
        logged = client.get_logged_model(model_id)
        latest = sorted(logged.metrics or [], key=lambda metric: (metric.step, metric.timestamp))
        if latest:
            return {metric.key: float(metric.value) for metric in latest}
    return legacy_tag_metrics(version)


def logged_model_id(version: ModelVersion) -> str | None:
    """The logged model a version was registered from (SQL registries keep it only in the source URI)."""
    if version.model_id:
        return str(version.model_id)
    source = str(version.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def legacy_tag_metrics(version: ModelVersion) -> dict[str, float]:
    """The ``reggaeton.metric.*`` tags of versions registered before metrics moved to the logged model."""
    metrics = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(names.Tag.LEGACY_METRIC_PREFIX):
            try:
                metrics[key.removeprefix(names.Tag.LEGACY_METRIC_PREFIX)] = float(value)
            except ValueError:
                logger.warning("version %s: metric tag %s=%r is not a number", version.version, key, value)
    return metrics


def get_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def find_version(client: MlflowClient, model_name: str, version: str) -> ModelVersion:
    """A registered version of ``model_name``.

    Raises:
        LookupError: one line naming the version and listing the registered ones.
    """
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as exc:
        found = sorted(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
        known = ", ".join(map(str, found)) or "none"
        raise LookupError(f"{model_name} has no version {version!r} (registered versions: {known})") from exc


def find_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion:
    """The version an alias of ``model_name`` points to.

    Raises:
        LookupError: one line naming the alias when it (or the model) does not exist.
    """
    version = get_alias(client, model_name, alias)
    if version is None:
        raise LookupError(f"{model_name} has no version with the alias {alias!r}")
    return version


def load_reference(client: MlflowClient, version: ModelVersion) -> pd.DataFrame:
    """Download a version's reference set from its training run."""
    if version.run_id is None:
        raise ValueError(f"version {version.version} has no training run, so no reference set")
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(version.run_id, names.REFERENCE_ARTIFACT, tmp)
        return pd.read_parquet(local)


def set_monitoring_state(
    client: MlflowClient, model_name: str, version: str, status: str, since: str
) -> None:
    """Put monitoring's state of a version on it (``names.Tag.MONITORING_*``), when it changed.

    Readers (the API's /metrics) act on the status, so it is written after a ``since`` it needs and
    before clearing one it no longer does: no reader sees a degraded version without its time.
    """
    pair = [(names.Tag.MONITORING_SINCE, since), (names.Tag.MONITORING_STATUS, status)]
    current = client.get_model_version(model_name, version).tags or {}
    for key, value in pair if since else reversed(pair):
        if current.get(key) != value:
            client.set_model_version_tag(model_name, version, key, value)


def log_version_files(
    client: MlflowClient, model_name: str, version: str, folder: str, files: Mapping[str, bytes]
) -> None:
    """Write files (name -> content) into ``folder`` of a version's training run (replacing same names)."""
    run_id = client.get_model_version(model_name, version).run_id
    if run_id is None:
        raise ValueError(f"version {version} has no training run to hold its files")
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        client.log_artifacts(run_id, tmp, artifact_path=folder)


def load_pipeline(model_name: str, version: str) -> Any:
    """Load a registered version's scikit-learn pipeline."""
    return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


def version_tags(model_name: str, version: str) -> dict[str, str]:
    """A registered version's tags (on the tracking URI this process is connected to)."""
    return dict(MlflowClient().get_model_version(model_name, version).tags)
