"""The training pipeline on the original data: tuned vs baseline, reproducibility, bad data, the flow."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
import skops.io
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sqlite_lock import sqlite_locked

from adapters import registry, tracking
from adapters.tracking import CALIBRATION_ARTIFACT, PR_CURVE_ARTIFACT, is_transient_error
from flows.train import (
    TASK_STEPS,
    TRAFFIC_SOURCE,
    TrainingResult,
    run_steps,
    train,
    train_flow,
    training_data,
)
from reggaeton import names
from reggaeton.data import (
    OTHER_FILE,
    REGGAETON_FILE,
    load_folder,
    split,
    synthetic_dataset,
    traffic_rows_for_share,
)
from reggaeton.model import (
    BASELINE,
    HIST_GRADIENT_BOOSTING,
    IMBALANCE,
    IMBALANCE_CHOICES,
    LOGISTIC_REGRESSION,
    RANDOM_FOREST,
)
from reggaeton.schema import (
    BASE,
    FEATURE_NAMES,
    OBSERVED_AT,
    PREDICTION,
    PROBABILITY,
    SOURCE,
    TARGET,
    TRAFFIC,
    SchemaError,
    validate_frame,
)
from reggaeton.settings import DataSettings, Settings, TrainingSettings
from reggaeton.training import fit_pipeline
from reggaeton.tuning import SEARCH_SPACES


def _settings(state: Path, folder: Path, **training: object) -> Settings:
    options: dict[str, object] = {"n_trials": 10, "cv_folds": 5, "n_jobs": 1, "bootstrap_rounds": 200}
    return Settings(
        state_dir=state,
        data=DataSettings(folder=folder, include_feedback=False),
        training=TrainingSettings(**{**options, **training}),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def trained(original_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    """One sequential (reproducible) training run on the original data."""
    return train(_settings(tmp_path_factory.mktemp("first") / "state", original_data))


def test_tuned_model_is_not_worse_than_the_baseline_beyond_noise_on_the_same_split(
    trained: TrainingResult,
) -> None:
    tuned, baseline = trained.metrics, trained.baseline_metrics
    # 16 held-out positives: a point comparison flips with the split (README, "Training benchmark");
    # the tuned model's interval must reach the baseline's figure.
    assert tuned["pr_auc_high"] >= baseline["pr_auc"]
    # Both come with a bootstrap interval around the point estimate.
    for metrics in (tuned, baseline):
        assert metrics["pr_auc_low"] <= metrics["pr_auc"] <= metrics["pr_auc_high"]
    # The held-out part keeps the natural prior of the original data (70 of 2,292 songs).
    holdout = trained.holdout
    assert list(holdout.columns) == [*FEATURE_NAMES, PROBABILITY, PREDICTION, TARGET, SOURCE, OBSERVED_AT]
    assert holdout[TARGET].mean() == pytest.approx(70 / 2292, abs=0.005)


def test_same_seed_and_data_give_the_same_hash_and_metrics(
    trained: TrainingResult, original_data: Path, tmp_path: Path
) -> None:
    again = train(_settings(tmp_path / "state", original_data))
    assert again.data_hash == trained.data_hash == load_folder(original_data).content_hash
    assert again.family == trained.family and again.params == trained.params
    assert again.threshold == trained.threshold
    assert again.metrics == trained.metrics
    assert again.baseline_metrics == trained.baseline_metrics


def test_train_records_its_retrain_request_on_the_run_and_the_version(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        data=DataSettings(synthetic_rows=600, include_feedback=False),
        training=TrainingSettings(
            n_trials=1, cv_folds=2, n_jobs=1, bootstrap_rounds=100, families=(LOGISTIC_REGRESSION,)
        ),
    )
    result = train(settings, request_id="request-7")
    client = registry.connect(settings)
    version = client.get_model_version(names.MODEL_NAME, result.version)
    assert version.tags[names.Tag.RETRAIN_REQUEST] == "request-7"
    assert client.get_run(result.run_id).data.tags[names.Tag.RETRAIN_REQUEST] == "request-7"


def _copy(original: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in (REGGAETON_FILE, OTHER_FILE):
        shutil.copy(original / name, target / name)
    return target


def _edit(folder: Path, name: str, change) -> None:  # type: ignore[no-untyped-def]
    frame = pd.read_csv(folder / name)
    change(frame).to_csv(folder / name, index=False)


def _set(column: str, value: object, rows: int):  # type: ignore[no-untyped-def]
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[frame.index[:rows], column] = value
        return frame

    return change


BAD_DATA = {
    "missing column": (REGGAETON_FILE, lambda f: f.drop(columns=["energy"]), r"column 'energy'.*missing"),
    "non-numeric": (REGGAETON_FILE, _set("tempo", "fast", 3), r"column 'tempo'.*non-numeric.*\(3 rows\)"),
    "out of range": (OTHER_FILE, _set("loudness", 125.513, 2), r"column 'loudness'.*outside.*\(2 rows\)"),
    "header only": (OTHER_FILE, lambda f: f.iloc[0:0], r"no rows \(0 rows\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_stops_the_run_and_registers_nothing(case: str, original_data: Path, tmp_path: Path) -> None:
    file, change, message = BAD_DATA[case]
    folder = _copy(original_data, tmp_path / "data")
    _edit(folder, file, change)
    settings = _settings(tmp_path / "state", folder, n_trials=1)
    with pytest.raises(SchemaError, match=message) as error:
        train(settings)
    assert file in str(error.value)
    _assert_nothing_registered(settings)


@pytest.mark.parametrize("case", ["missing file", "empty file"])
def test_missing_or_empty_file_is_named(case: str, original_data: Path, tmp_path: Path) -> None:
    folder = _copy(original_data, tmp_path / "data")
    if case == "missing file":
        (folder / OTHER_FILE).unlink()
    else:
        (folder / OTHER_FILE).write_text("")
    settings = _settings(tmp_path / "state", folder, n_trials=1)
    with pytest.raises(SchemaError, match=OTHER_FILE):
        train(settings)
    _assert_nothing_registered(settings)


def test_one_class_only_is_refused(original_data: Path, tmp_path: Path) -> None:
    # Both files of the layout carry one class each: a folder whose positives all lack values has none.
    folder = _copy(original_data, tmp_path / "data")
    _edit(folder, REGGAETON_FILE, _set("valence", None, 10_000))
    settings = _settings(tmp_path / "state", folder, n_trials=1)
    with pytest.raises(SchemaError, match=rf"{REGGAETON_FILE}.*no rows"):
        train(settings)
    # Labelled traffic cannot turn a one-class set into a two-class one behind the schema's back.
    negatives_only = load_folder(original_data).frame.query(f"{TARGET} == 0")
    with pytest.raises(SchemaError, match=rf"column '{TARGET}'.*only one class.*\(2222 rows\)"):
        validate_frame(negatives_only, "negatives", require_target=True)
    _assert_nothing_registered(settings)


def _assert_nothing_registered(settings: Settings) -> None:
    client = registry.connect(settings)
    assert client.search_registered_models() == []
    assert client.search_model_versions() == []


def test_labelled_traffic_joins_the_training_data(original_data: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path / "state", original_data)
    base = training_data(settings)
    traffic = base.frame.head(5).copy()
    combined = training_data(settings, traffic)
    assert len(combined.frame) == len(base.frame) + 5
    assert TRAFFIC_SOURCE in combined.source and "(5 rows)" in combined.source
    assert combined.content_hash != base.content_hash
    bad = traffic.assign(loudness=125.513)
    with pytest.raises(SchemaError, match=rf"{TRAFFIC_SOURCE}: column 'loudness'.*\(5 rows\)"):
        training_data(settings, bad)


def test_a_retrain_keeps_the_base_data_its_share_of_the_rows(original_data: Path, tmp_path: Path) -> None:
    """Issue 26: traffic added as it came drowned the base data, and the retrain forgot the old songs."""
    traffic = synthetic_dataset(3000, seed=9).frame  # more traffic than the folder has songs
    folder = _settings(tmp_path / "state", original_data)
    share = folder.data.min_base_share
    combined = training_data(folder, traffic)
    songs = len(load_folder(original_data).frame)
    # A folder's songs are all kept; the traffic is sampled down so that they stay the share asked for.
    assert (combined.frame[SOURCE] == BASE).sum() == songs
    kept = int((combined.frame[SOURCE] == TRAFFIC).sum())
    assert kept == traffic_rows_for_share(songs, share) and songs / (songs + kept) >= share
    assert training_data(folder, traffic).content_hash == combined.content_hash  # the same rows each time
    # A synthetic base draws as many songs as the share needs, from the same generator.
    synthetic = Settings(state_dir=tmp_path / "state", data=DataSettings(min_base_share=0.75))
    drawn = training_data(synthetic, traffic)
    assert (drawn.frame[SOURCE] == BASE).sum() == 9000 and (drawn.frame[SOURCE] == TRAFFIC).sum() == 3000
    # Without a share, everything is added as before.
    everything = training_data(
        folder.model_copy(update={"data": folder.data.model_copy(update={"min_base_share": 0})}), traffic
    )
    assert (everything.frame[SOURCE] == TRAFFIC).sum() == 3000


@pytest.mark.slow
def test_train_flow_leaves_a_documented_challenger(
    prefect_api_url: str, original_data: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path / "state", original_data, n_trials=6, cv_folds=3, n_jobs=2)
    version = train_flow(settings=settings)

    client = registry.connect(settings)
    challenger = registry.get_alias(client, names.MODEL_NAME, names.CHALLENGER)
    assert challenger is not None and int(challenger.version) == version
    dataset = load_folder(original_data)
    tags = challenger.tags
    # Only the tags code reads; the metrics are on the logged model, where the MLflow UI shows them.
    assert set(tags) == {names.Tag.FLOW_RUN_ID, names.Tag.DATA_HASH, names.Tag.THRESHOLD}
    assert tags[names.Tag.DATA_HASH] == dataset.content_hash
    assert 0 < float(tags[names.Tag.THRESHOLD]) < 1
    logged = client.get_logged_model(registry.logged_model_id(challenger))
    assert logged.params[tracking.MODEL_FAMILY_PARAM] in settings.training.families
    assert logged.params[tracking.DATA_SOURCE_PARAM] == dataset.source
    model_metrics = {metric.key: metric.value for metric in logged.metrics or []}
    assert 0 < model_metrics["pr_auc"] <= 1 and model_metrics["threshold"] == float(tags[names.Tag.THRESHOLD])
    flow_run_id = tags[names.Tag.FLOW_RUN_ID]

    # The Prefect server saw the flow run complete.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(flow_run_id))
    assert flow_run.state is not None and flow_run.state.is_completed()

    # The parent run: dataset input, params, baseline with interval, plots, nested trials.
    assert challenger.run_id is not None
    parent = client.get_run(challenger.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.Tag.FLOW_RUN_ID] == flow_run_id
    inputs = parent.inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [dataset.content_hash[: registry.DIGEST_LENGTH]]
    metrics = parent.data.metrics
    for prefix in ("", "baseline_"):
        assert metrics[f"{prefix}pr_auc_low"] <= metrics[f"{prefix}pr_auc"] <= metrics[f"{prefix}pr_auc_high"]
    assert parent.data.params["best.family"] == logged.params[tracking.MODEL_FAMILY_PARAM]
    # The figures status, the demo summary and GET /model show are the run's held-out ones, unchanged.
    assert model_metrics == {key: metrics[key] for key in model_metrics}
    held_out = {key for key in metrics if not key.startswith(("baseline_", "cv_", "pr_auc_gain"))}
    assert held_out and held_out <= set(model_metrics)
    assert len(logged.metrics or []) == len(model_metrics)  # each figure once on the model's page
    assert registry.version_metrics(client, challenger) == model_metrics
    assert "cv_pr_auc_mean" in metrics and "cv_pr_auc_std" in metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert artifacts == {PR_CURVE_ARTIFACT, CALIBRATION_ARTIFACT}
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'"
    )
    assert len(trials) == 6
    for trial in trials:
        assert {"cv_pr_auc_mean", "cv_pr_auc_std"} <= set(trial.data.metrics)
        assert trial.data.params["family"] in settings.training.families

    # The reference set and the model itself load back and agree.
    reference = registry.load_reference(client, challenger)
    assert list(reference.columns) == [*FEATURE_NAMES, PROBABILITY, PREDICTION, TARGET, SOURCE, OBSERVED_AT]
    assert len(reference) == int(parent.data.params["data.holdout_rows"])
    pipeline = registry.load_pipeline(names.MODEL_NAME, challenger.version)
    proba = pipeline.predict_proba(reference[list(FEATURE_NAMES)].to_numpy())[:, 1]
    assert proba == pytest.approx(reference[PROBABILITY].to_numpy())


@pytest.mark.slow
def test_command_line_runs_the_flow_against_the_prefect_server(
    prefect_api_url: str, original_data: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url,
        "REGGAETON_STATE_DIR": str(state),
        "REGGAETON_DATA__INCLUDE_FEEDBACK": "false",
        "REGGAETON_TRAINING__CV_FOLDS": "3",
        "REGGAETON_TRAINING__N_JOBS": "1",
        "REGGAETON_TRAINING__BOOTSTRAP_ROUNDS": "100",
    }
    # A SQLite store given as the standard variable: the command line honours it (no server to check).
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{state / 'mlflow.db'}"
    reggaeton = str(Path(sys.executable).with_name("reggaeton"))
    command = [reggaeton, "train", "--data-folder", str(original_data), "--n-trials", "2"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "challenger: version 1" in completed.stdout
    client = registry.connect(Settings(state_dir=state))
    challenger = registry.get_alias(client, names.MODEL_NAME, names.CHALLENGER)
    assert challenger is not None and str(challenger.version) == "1"


@pytest.mark.parametrize("family", [*sorted(SEARCH_SPACES), BASELINE])
def test_every_fitted_pipeline_is_loadable_with_the_trusted_types(family: str, original_data: Path) -> None:
    # Real data size matters: a fitted SMOTE keeps a KD-tree index only above a few hundred rows.
    parts = split(load_folder(original_data), 0.25, seed=0)
    small = {HIST_GRADIENT_BOOSTING: {"max_iter": 10}, RANDOM_FOREST: {"n_estimators": 5}}.get(family, {})
    options = [{}] if family == BASELINE else [{IMBALANCE: choice} for choice in IMBALANCE_CHOICES]
    for option in options:
        pipeline = fit_pipeline(family, {**small, **option}, parts.train, seed=0)
        untrusted = set(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))
        assert untrusted <= set(registry.SKOPS_TRUSTED_TYPES), (family, option)


def test_only_unanswered_tracking_calls_are_retried() -> None:
    assert is_transient_error(
        MlflowException("API request to http://127.0.0.1:1/api failed with exception x")
    )
    assert is_transient_error(ConnectionRefusedError())
    assert is_transient_error(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert not is_transient_error(MlflowException("The saved sklearn model references untrusted types."))
    assert not is_transient_error(SchemaError("data.csv", "no rows", rows=0))


def test_a_step_mlflow_stops_answering_fails_the_flow_after_one_try_to_mark_the_run_failed(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """Not after the MLflow steps' retries: each try waits out the store (20 s on SQLite, minutes on a
    tracking server), so three more tries would only delay the failure."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType

    settings = Settings(
        state_dir=tmp_path / "state",
        data=DataSettings(include_feedback=False, synthetic_rows=400),
        training=TrainingSettings(n_trials=1, n_jobs=1),
    )
    locked = contextlib.ExitStack()

    def tune_while_mlflow_stops(*_args: object) -> None:
        (database,) = settings.state_dir.rglob("mlflow.db")
        locked.enter_context(sqlite_locked(database))  # another writer: MLflow's writes wait, then fail
        raise MlflowException("the tracking store did not answer", error_code=TEMPORARILY_UNAVAILABLE)

    steps = dataclasses.replace(TASK_STEPS, tune=task(tune_while_mlflow_stops, name="tune"))

    @flow(name="train-while-mlflow-stops")
    def training() -> None:
        run_steps(steps, settings, None, flow_run_id="test", request_id=None, progress_bar=False)

    with locked:
        state = training(return_state=True)
    assert state.is_failed()
    with pytest.raises(MlflowException, match="did not answer"):  # the step's error, not the marking's
        state.result()
    with get_client(sync_client=True) as prefect:
        flow_run_id = FlowRunFilterId(any_=[state.state_details.flow_run_id])
        task_runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=flow_run_id))
    # One task run marks the run, in one try (MLflow still did not answer it).
    marking = [run for run in task_runs if run.name.startswith(("end-mlflow-run", "fail-mlflow-run"))]
    assert [(run.run_count, run.state_type) for run in marking] == [(1, StateType.FAILED)]
