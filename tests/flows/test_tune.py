"""The study spread over the tuning pool: the parent's finishing step, and its fallback with no worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import optuna
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun, StateType

from adapters import prefect_api, registry
from flows import tune
from flows.train import train
from reggaeton import names, tuning
from reggaeton.data import features_array, synthetic_dataset
from reggaeton.model import LOGISTIC_REGRESSION
from reggaeton.schema import TARGET
from reggaeton.settings import DataSettings, PrefectSettings, Settings, TrainingSettings


def test_the_parent_fails_a_crashed_runs_trial_and_runs_the_missing_ones_itself(tmp_path: Path) -> None:
    storage, name = f"sqlite:///{tmp_path / 'optuna.db'}", "retrain-1"
    data = synthetic_dataset(400, seed=3)
    X, y = features_array(data.frame), data.y.to_numpy()

    def run(n_trials: int, worker: str) -> tuning.TuningResult:
        return tuning.tune(
            X, y, storage=storage, study_name=name, families=[LOGISTIC_REGRESSION], n_trials=n_trials,
            folds=2, repeats=1, seed=1, n_jobs=1, progress_bar=False, worker=worker,
        )  # fmt: skip

    run(2, "box-a")  # one tuning run finished its quota...
    crashed = optuna.load_study(study_name=name, storage=storage).ask()  # ...the other crashed mid-trial
    topped_up: list[int] = []

    def top_up(missing: int) -> tuning.TuningResult:
        topped_up.append(missing)
        return run(missing, "parent")

    result = tune.complete_study(storage, name, 5, top_up)

    assert topped_up == [3]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    states = [trial.state for trial in trials]
    assert states[crashed.number] == TrialState.FAIL
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 5
    assert result.n_trials == 6
    assert result == tuning.study_result(storage, name)
    # Nothing missing: the result is read back, nothing runs.
    assert tune.complete_study(storage, name, 5, top_up) == result and topped_up == [3]


def _settings(
    state: Path, prefect_api_url: str, parallel_workers: int, spread_timeout_s: float = 3600.0,
    tuning_pool: str = names.TUNING_POOL,
) -> Settings:  # fmt: skip
    return Settings(
        state_dir=state,
        # Enough positives that every trial fits (SMOTE needs 6 in a training fold): the stable split is by
        # hash, not stratified, so a small sample can hold out more than its share of them.
        data=DataSettings(synthetic_rows=1000, include_feedback=False),
        prefect=PrefectSettings(api_url=prefect_api_url, tuning_pool=tuning_pool),
        training=TrainingSettings(
            n_trials=4,
            cv_folds=2,
            n_jobs=1,
            bootstrap_rounds=100,
            families=(LOGISTIC_REGRESSION,),
            parallel_workers=parallel_workers,
            spread_timeout_s=spread_timeout_s,
            worker_name="this-box",
        ),
    )


def test_with_no_tuning_worker_online_the_retrain_tunes_in_its_own_run(
    prefect_api_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path / "spread", prefect_api_url, parallel_workers=2)
    assert tune.tuning_runs(settings) == 1  # the pool has no worker (it does not even exist)

    spread = train(settings)
    alone = train(_settings(tmp_path / "alone", prefect_api_url, parallel_workers=1))

    assert (spread.family, spread.params, spread.threshold) == (alone.family, alone.params, alone.threshold)
    assert spread.metrics == alone.metrics
    client = registry.connect(settings)
    parent = client.get_run(spread.run_id)
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{spread.run_id}'"
    )
    assert len(trials) == 4
    assert {trial.data.tags[names.Tag.WORKER] for trial in trials} == {"this-box"}


def _study_runs(settings: Settings, deployment_id: UUID, study_name: str) -> list[FlowRun]:
    """The tuning runs of one study (the tests share the Prefect server, and the tune deployment's name)."""
    with prefect_api.prefect_api(settings), get_client(sync_client=True) as prefect:
        runs = prefect_api.deployment_runs(prefect, deployment_id)
    return [run for run in runs if run.parameters.get("study_name") == study_name]


def test_tuning_runs_nobody_starts_are_cancelled_at_the_timeout_and_the_parent_tunes_alone(
    prefect_api_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path / "late", prefect_api_url, parallel_workers=2, spread_timeout_s=3.0)
    pool = "nobody-serves-this"
    settings = settings.model_copy(
        update={"prefect": settings.prefect.model_copy(update={"tuning_pool": pool})}
    )
    with prefect_api.prefect_api(settings), get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = prefect.create_flow_from_name(names.TUNE_FLOW)
        deployment_id = prefect.create_deployment(flow_id, names.TUNE_DEPLOYMENT, work_pool_name=pool)
    settings.ensure_state_dir()
    client = registry.connect(settings)
    experiment_id = registry.ensure_experiment(client, "late-tuning", settings)
    parent = client.create_run(experiment_id).info.run_id
    frame = synthetic_dataset(400, seed=3).frame

    tune.spread_study(client, settings, frame, (parent, experiment_id), "late-study", runs=2)

    states = [run.state_type for run in _study_runs(settings, deployment_id, "late-study")]
    assert states == [StateType.CANCELLED, StateType.CANCELLED]
    topped_up: list[int] = []

    def top_up(missing: int) -> tuning.TuningResult:
        topped_up.append(missing)
        return tuning.tune(
            features_array(frame), frame[TARGET].to_numpy(), storage=settings.optuna_storage,
            study_name="late-study", families=[LOGISTIC_REGRESSION], n_trials=missing, folds=2, repeats=1,
            seed=1, n_jobs=1, progress_bar=False,
        )  # fmt: skip

    result = tune.complete_study(settings.optuna_storage, "late-study", settings.training.n_trials, top_up)
    assert topped_up == [settings.training.n_trials]
    assert result.n_trials == settings.training.n_trials


_STOPPED_PARENT = """
import sys
from pathlib import Path
from prefect import flow
from adapters import registry
from flows import tune
from reggaeton.data import synthetic_dataset
from reggaeton.settings import Settings

settings = Settings.model_validate_json(Path(sys.argv[1]).read_text())

@flow(name="stopped-parent")
def parent() -> None:
    client = registry.connect(settings)
    experiment_id = registry.ensure_experiment(client, "stopped-tuning", settings)
    run = client.create_run(experiment_id).info.run_id
    frame = synthetic_dataset(400, seed=3).frame
    tune.spread_study(client, settings, frame, (run, experiment_id), "stopped-study", runs=2)

parent()
"""


def test_a_training_run_stopped_while_it_waits_cancels_its_tuning_runs(
    prefect_api_url: str, tmp_path: Path
) -> None:
    # As a worker stops a cancelled training run: SIGTERM to its process, which Prefect's flow engine
    # turns into an exception inside the flow. The tuning runs, here on a pool nobody serves so they
    # wait, must not outlive it: left Scheduled, a worker would run them later for nothing.
    pool = "nobody-serves-this-either"
    settings = _settings(tmp_path / "stopped", prefect_api_url, parallel_workers=2, tuning_pool=pool)
    settings.ensure_state_dir()
    with prefect_api.prefect_api(settings), get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = prefect.create_flow_from_name(names.TUNE_FLOW)
        deployment_id = prefect.create_deployment(flow_id, names.TUNE_DEPLOYMENT, work_pool_name=pool)
    (tmp_path / "settings.json").write_text(settings.model_dump_json())
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    parent = subprocess.Popen(
        [sys.executable, "-c", _STOPPED_PARENT, str(tmp_path / "settings.json")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_study_runs(settings, deployment_id, "stopped-study")) < 2:
            assert parent.poll() is None, parent.communicate()[0]
            assert time.monotonic() < deadline, "the tuning runs were never submitted"
            time.sleep(0.5)
        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=60)[0]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode != 0, output
    runs = _study_runs(settings, deployment_id, "stopped-study")
    assert [run.state_type for run in runs] == [StateType.CANCELLED, StateType.CANCELLED], output
    assert all(run.state and "its training run failed" in (run.state.message or "") for run in runs), output
