"""prefect.yaml + automations applied against a real Prefect server, twice: same state both times."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from prefect.automations import EventTrigger
from prefect.client.orchestration import get_client

from adapters.prefect_api import prefect_api
from flows import automations, deploy
from reggaeton.names import OPERATOR_DEPLOYMENTS, SCORE_DEPLOYMENT, TUNE_DEPLOYMENT, Event
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _snapshot(settings: Settings) -> dict[str, Any]:
    """Everything deploy touches, without the ids and timestamps that may legitimately change."""
    with prefect_api(settings), get_client(sync_client=True) as client:
        pool = client.read_work_pool(settings.prefect.work_pool)
        deployments = {
            d.name: {
                "id": str(d.id),
                "entrypoint": d.entrypoint,
                "pull_steps": d.pull_steps,
                "pool": d.work_pool_name,
                "concurrency": (
                    d.global_concurrency_limit.limit if d.global_concurrency_limit else None,
                    d.concurrency_options.collision_strategy.value if d.concurrency_options else None,
                ),
                "schedules": sorted(
                    s.schedule.model_dump_json(exclude={"anchor_date"}) for s in d.schedules if s.active
                ),
            }
            for d in client.read_deployments()
        }
        autos = sorted(
            (
                a.name,
                a.trigger.model_dump_json(exclude={"id"}),
                len(a.actions),
                a.actions[0].type,
                str(getattr(a.actions[0], "deployment_id", None)),
            )
            for a in client.read_automations()
        )
    return {"pool": (pool.name, pool.type), "deployments": deployments, "automations": autos}


@pytest.mark.slow
def test_deploy_twice_same_state(project: Path, loop_settings: Settings) -> None:
    # The session's Prefect server is shared: earlier tests may have applied some of these already.
    first_outcome = deploy.deploy(loop_settings, project_dir=project)
    assert set(first_outcome.values()) <= {"created", "updated", "unchanged"}
    first = _snapshot(loop_settings)

    second_outcome = deploy.deploy(loop_settings, project_dir=project)
    assert set(second_outcome.values()) == {"unchanged"}
    assert _snapshot(loop_settings) == first

    assert first["pool"] == ("reggaeton-pool-test", "process")
    # The worker runs each flow from the folder deployed from (the file deployed is a copy elsewhere).
    working_directory = [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
    for name in deploy.deployment_names(project):
        assert first["deployments"][name]["pull_steps"] == working_directory, name
    train = first["deployments"]["train-and-promote"]
    assert train["pool"] == "reggaeton-pool-test"
    # The tuning runs: their own pool (created too), no schedule, no concurrency limit.
    tune = first["deployments"][TUNE_DEPLOYMENT]
    assert (tune["pool"], tune["schedules"], tune["concurrency"]) == (
        loop_settings.prefect.tuning_pool,
        [],
        (None, None),
    )
    with prefect_api(loop_settings), get_client(sync_client=True) as client:
        assert client.read_work_pool(loop_settings.prefect.tuning_pool).type == "process"
    assert train["concurrency"] == (1, "CANCEL_NEW")
    # Batch scoring: on the main pool, no schedule, one run at a time and the next one queued.
    score = first["deployments"][SCORE_DEPLOYMENT]
    assert (score["pool"], score["schedules"], score["concurrency"]) == (
        "reggaeton-pool-test",
        [],
        (1, "ENQUEUE"),
    )
    # The operator's commands (run on a container stack's worker): main pool, no schedule, no limit.
    for name in OPERATOR_DEPLOYMENTS:
        operator = first["deployments"][name]
        assert (operator["pool"], operator["schedules"], operator["concurrency"]) == (
            "reggaeton-pool-test",
            [],
            (None, None),
        ), name
    assert any('"interval":604800.0' in s for s in train["schedules"])
    monitor = first["deployments"]["monitor"]
    assert any('"interval":300.0' in s for s in monitor["schedules"])

    names = {a[0]: a for a in first["automations"]}
    retrain = names["reggaeton-retrain-on-degraded"]
    assert retrain[3] == "run-deployment"
    assert retrain[4] == train["id"]
    assert Event.DEGRADED in retrain[1] and '"within":600.0' in retrain[1]
    assert Event.VERSION_LABEL in retrain[1]  # debounced per version (for_each), not for the whole loop
    rerun = names["reggaeton-rerun-crashed-retrain"]  # found the retrain deployment by its name
    assert rerun[3] == "run-deployment" and rerun[4] == train["id"]
    for notice in automations.notices(loop_settings):
        assert names[notice.name][3] == "send-notification"


@pytest.mark.slow
def test_a_failing_deployment_is_named_and_the_others_still_deploy(
    project: Path, loop_settings: Settings
) -> None:
    """One `prefect deploy --all`: a deployment that fails fails the call, with Prefect's words; the
    others deploy."""
    (project / "flows" / "monitor.py").write_text("# the monitor flow went missing\n")
    pool = "reggaeton-pool-broken"
    settings = loop_settings.model_copy(
        update={"prefect": loop_settings.prefect.model_copy(update={"work_pool": pool})}
    )
    deploy.ensure_work_pool(settings)
    deploy.ensure_work_pool(settings, settings.prefect.tuning_pool)
    with pytest.raises(RuntimeError, match=r"prefect deploy --all failed") as failed:
        deploy.deploy_all(settings, project_dir=project)
    assert "'monitor' not found in 'flows/monitor.py'" in str(failed.value)  # Prefect's own output
    with prefect_api(settings), get_client(sync_client=True) as client:
        pools = {d.name: d.work_pool_name for d in client.read_deployments()}
    assert pools["train-and-promote"] == pool  # deployed by its own command, beside the failing one


def test_notices_cover_every_event_of_the_contract() -> None:
    covered = set().union(*(n.events for n in automations.notices(Settings())))
    assert {
        Event.DEGRADED,
        Event.PROMOTED,
        Event.REJECTED,
        Event.RELOAD_FAILED,
        Event.LOG_UNAVAILABLE,
        Event.LOG_RECOVERED,
        Event.SHADOW_STARTED,
        Event.CANARY_STEP,
        Event.CANARY_ABORTED,
        Event.CHALLENGER_FAILING,
        Event.UNAUTHORIZED_CHAMPION,
    } <= covered
    assert automations.FLOW_RUN_FAILED in covered


def test_degraded_notice_is_debounced_like_the_retrain_per_version() -> None:
    settings = Settings(prefect={"debounce_s": 42})
    [degraded] = [n for n in automations.notices(settings) if Event.DEGRADED in n.events]
    retrain = automations.retrain_automation(uuid4(), settings).trigger
    assert isinstance(retrain, EventTrigger)
    assert degraded.debounce == retrain.within == timedelta(seconds=42)
    assert degraded.for_each == retrain.for_each == {"prefect.resource.id", Event.VERSION_LABEL}
    # The retrain is no deployment trigger in prefect.yaml: its window comes from the settings.
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    [train] = [d for d in config["deployments"] if d["name"] == "train-and-promote"]
    assert not train.get("triggers")


def test_unauthorized_champion_notifies_once_per_version_moved_to() -> None:
    # Every API replica reports the same move: one notification per version and window, not per replica.
    [notice] = [n for n in automations.notices(Settings()) if Event.UNAUTHORIZED_CHAMPION in n.events]
    assert notice.for_each == {Event.VERSION_LABEL} and notice.debounce > timedelta(0)
    trigger = automations.to_automation(notice, uuid.uuid4()).trigger
    assert trigger.for_each == {Event.VERSION_LABEL}


def test_weekly_retrain_is_anchored_on_monday_0300_utc() -> None:
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    [train] = [d for d in config["deployments"] if d["name"] == "train-and-promote"]
    [weekly] = train["schedules"]
    anchor = datetime.fromisoformat(weekly["anchor_date"])
    assert weekly["interval"] == 7 * 24 * 3600
    assert (anchor.weekday(), anchor.hour, anchor.minute, anchor.utcoffset()) == (0, 3, 0, timedelta(0))


def test_prefect_yaml_agrees_with_settings() -> None:
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    pools = {d["name"]: d["work_pool"]["name"] for d in config["deployments"]}
    assert pools.pop(TUNE_DEPLOYMENT) == Settings().prefect.tuning_pool
    assert set(pools.values()) == {Settings().prefect.work_pool}
    assert {d["entrypoint"] for d in config["deployments"]} == {
        "flows/promote.py:train_and_promote",
        "flows/monitor.py:monitor",
        "flows/tune.py:tune_study",
        "flows/score_catalogue.py:score_catalogue",
        "flows/retention.py:retention",
        "flows/promote.py:promotion_gate",
        "flows/promote.py:promote_version",
        "flows/promote.py:rollback",
        "flows/train.py:train_flow",
        "flows/live_gate.py:live_gate",
        "flows/live_gate.py:shadow_start",
        "flows/live_gate.py:live_report_flow",
        "flows/live_gate.py:canary_start",
        "flows/live_gate.py:canary_abort",
    }


@pytest.mark.parametrize("name", ["train-and-promote", *OPERATOR_DEPLOYMENTS])
def test_the_promotion_and_training_entrypoints_are_the_flows_of_their_names(name: str) -> None:
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    [deployment] = [d for d in config["deployments"] if d["name"] == name]
    path, function = deployment["entrypoint"].split(":")
    assert load_flow_from_entrypoint(f"{REPO_ROOT / path}:{function}").name == name
