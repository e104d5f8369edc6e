"""Names that several files must agree on are defined once (reggaeton/names.py); these tests tie the
files that cannot import them (prefect.yaml) and the stacks that set them to that one definition."""

from __future__ import annotations

import re
import subprocess

import yaml

from embedded.stack import SERVICE_NAMES
from flows import promote, train
from flows.deploy import PREFECT_FILE, PROJECT_DIR
from flows.live_gate import canary_abort, canary_start, live_gate, live_report_flow, shadow_start
from flows.retention import retention
from flows.score_catalogue import score_catalogue
from flows.tune import tune_study
from infra import services
from reggaeton import names
from reggaeton.settings import Settings


def _prefect_yaml() -> dict:
    return yaml.safe_load((PROJECT_DIR / PREFECT_FILE).read_text())


def test_prefect_yaml_uses_the_one_work_pool_and_deployment_names() -> None:
    config = _prefect_yaml()
    pools = {deployment["name"]: deployment["work_pool"]["name"] for deployment in config["deployments"]}
    assert pools.pop(names.TUNE_DEPLOYMENT) == names.TUNING_POOL == Settings().prefect.tuning_pool
    assert set(pools.values()) == {names.WORK_POOL} == {Settings().prefect.work_pool}
    expected = {names.TRAIN_DEPLOYMENT, names.MONITOR_DEPLOYMENT, names.SCORE_DEPLOYMENT}
    assert expected | {names.RETENTION_DEPLOYMENT} <= set(pools)
    tune = next(
        deployment for deployment in config["deployments"] if deployment["name"] == names.TUNE_DEPLOYMENT
    )
    assert tune["entrypoint"].endswith(f":{tune_study.fn.__name__}") and tune_study.name == names.TUNE_FLOW
    score = next(
        deployment for deployment in config["deployments"] if deployment["name"] == names.SCORE_DEPLOYMENT
    )
    assert score["entrypoint"] == f"flows/score_catalogue.py:{score_catalogue.fn.__name__}"
    assert score_catalogue.name == names.SCORE_DEPLOYMENT
    retention_deployment = next(
        deployment for deployment in config["deployments"] if deployment["name"] == names.RETENTION_DEPLOYMENT
    )
    assert retention_deployment["entrypoint"] == f"flows/retention.py:{retention.fn.__name__}"
    assert retention.name == names.RETENTION_FLOW
    gate = next(
        deployment for deployment in config["deployments"] if deployment["name"] == names.LIVE_GATE_DEPLOYMENT
    )
    assert gate["entrypoint"] == f"flows/live_gate.py:{live_gate.fn.__name__}"
    assert live_gate.name == names.LIVE_GATE_FLOW
    assert gate["schedules"] and gate["concurrency_limit"]["limit"] == 1


def test_the_operator_commands_deployments_run_their_flows_on_demand_only() -> None:
    """`reggaeton --stack compose gate|promote|rollback|train|shadow|canary` run these by name on the
    stack's worker."""
    deployments = {deployment["name"]: deployment for deployment in _prefect_yaml()["deployments"]}
    flows = {
        names.GATE_DEPLOYMENT: ("flows/promote.py", promote.promotion_gate),
        names.PROMOTE_DEPLOYMENT: ("flows/promote.py", promote.promote_version),
        names.ROLLBACK_DEPLOYMENT: ("flows/promote.py", promote.rollback),
        names.TRAIN_ONLY_DEPLOYMENT: ("flows/train.py", train.train_flow),
        names.SHADOW_START_DEPLOYMENT: ("flows/live_gate.py", shadow_start),
        names.LIVE_REPORT_DEPLOYMENT: ("flows/live_gate.py", live_report_flow),
        names.CANARY_START_DEPLOYMENT: ("flows/live_gate.py", canary_start),
        names.CANARY_ABORT_DEPLOYMENT: ("flows/live_gate.py", canary_abort),
    }
    assert set(flows) == set(names.OPERATOR_DEPLOYMENTS)
    for name, (path, operator_flow) in flows.items():
        deployment = deployments[name]
        assert deployment["entrypoint"] == f"{path}:{operator_flow.fn.__name__}", name
        assert operator_flow.name == name  # the flow's own name, as the UI and `prefect deployment run` show
        assert deployment["work_pool"]["name"] == names.WORK_POOL, name
        assert not deployment.get("schedules") and not deployment.get("triggers"), name
        assert "concurrency_limit" not in deployment, name


def test_prefect_yaml_triggers_name_real_events() -> None:
    events = {value for key, value in vars(names.Event).items() if key.isupper()}
    for deployment in _prefect_yaml()["deployments"]:
        for trigger in deployment.get("triggers", []):
            assert set(trigger["expect"]) <= events, trigger["name"]


def test_both_stacks_run_workers_on_the_pool_with_the_automations_heartbeat() -> None:
    worker = next(service for service in services.SERVICES if service.name == "worker")
    assert worker.command[worker.command.index("--pool") + 1] == names.WORK_POOL
    assert worker.environment["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(names.FLOW_HEARTBEAT_S)
    assert worker.environment["PREFECT_WORKER_QUERY_SECONDS"] == str(names.WORKER_POLL_S)
    assert worker.environment["REGGAETON_PREFECT__WORK_POOL"] == names.WORK_POOL


def test_every_image_runs_with_the_telemetry_switches_the_local_processes_get() -> None:
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    base = dockerfile[dockerfile.index(" AS base") :]
    for key, value in names.TELEMETRY_OFF.items():
        assert f"{key}={value}" in base, key


def test_make_help_lists_every_target_and_the_services_up_starts() -> None:
    shown = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60
    ).stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    lines = {line.split()[0]: line for line in plain.splitlines() if line.strip()}
    makefile = (PROJECT_DIR / "Makefile").read_text().splitlines()
    phony = {word for line in makefile if line.startswith(".PHONY:") for word in line.split()[1:]}
    assert phony - {"uv"} <= set(lines), sorted(phony - set(lines))  # uv: the installer's own step
    assert all(service in lines["up"] for service in SERVICE_NAMES), lines["up"]
