"""The Pulumi program under Pulumi's mocks: resources, their wiring, config and secret handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pulumi_harness import (
    CONTAINER,
    IMAGE,
    NETWORK,
    REMOTE_IMAGE,
    VOLUME,
    Run,
    run_program,
)

from infra.services import APP_IMAGE, INIT_SQL_PATH, SERVICES, VARIABLES, VOLUMES, init_sql

PASSWORD = "pw-under-test-7f3a"
TOKEN = "token-under-test-91c2"
SECRETS = {"dbPassword": PASSWORD, "adminToken": TOKEN}
INFRA = Path(__file__).resolve().parents[2] / "infra"


@pytest.fixture(scope="module")
def run() -> Run:
    return run_program({**SECRETS, "imageTag": "t1", "apiPort": "18000"}, secret_keys=list(SECRETS))


def test_declares_one_image_one_network_the_volumes_and_a_container_per_service(run: Run) -> None:
    mocks = run.mocks
    assert list(mocks.of_type(IMAGE)) == ["app-image"]
    image = mocks.of_type(IMAGE)["app-image"]
    assert image["imageName"] == "reggaeton-mlops:t1"
    assert image["skipPush"] is True
    assert Path(image["build"]["dockerfile"]).name == "Dockerfile"
    assert (Path(image["build"]["context"]) / "Dockerfile").is_file()
    assert list(mocks.of_type(REMOTE_IMAGE).values()) == [{"name": "postgres:15", "keepLocally": True}]
    assert [n["name"] for n in mocks.of_type(NETWORK).values()] == ["reggaeton-dev-reggaeton"]
    assert sorted(v["name"] for v in mocks.of_type(VOLUME).values()) == sorted(
        f"reggaeton-dev-{v}" for v in VOLUMES
    )
    assert sorted(mocks.of_type(CONTAINER)) == sorted(s.name for s in SERVICES)


def test_containers_are_wired_to_the_network_image_volumes_and_dependencies(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    for service in SERVICES:
        inputs = containers[service.name]
        assert inputs["networksAdvanced"] == [{"name": "reggaeton-dev-reggaeton", "aliases": [service.name]}]
        expected_image = "reggaeton-mlops:t1" if service.image == APP_IMAGE else service.image
        assert inputs["image"] == expected_image
        assert run.depends_on[service.name] == sorted(service.depends_on)
        mounted = {v["volumeName"]: v["containerPath"] for v in inputs.get("volumes", [])}
        assert mounted == {f"reggaeton-dev-{name}": path for name, path in service.volumes.items()}
        # Long-running containers must become healthy; the one-shot job runs to completion.
        if service.one_shot:
            assert inputs["healthcheck"] == {"tests": ["NONE"]}
            assert inputs["attach"] is True
            assert inputs["mustRun"] is False
            assert inputs["restart"] == "no"
        else:
            assert inputs["wait"] is True
            assert inputs["restart"] == "unless-stopped"
            assert inputs["healthcheck"]["tests"][0] == "CMD"
    assert containers["postgres"]["uploads"] == [{"file": INIT_SQL_PATH, "content": init_sql()}]


def test_ports_come_from_config_and_bind_only_to_loopback(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    published = {name: c.get("ports", []) for name, c in containers.items() if c.get("ports")}
    assert published == {
        "mlflow": [{"internal": 5000, "external": 5000, "ip": "127.0.0.1"}],
        "prefect-server": [{"internal": 4200, "external": 4200, "ip": "127.0.0.1"}],
        "api": [{"internal": 8000, "external": 18000, "ip": "127.0.0.1"}],
    }


def test_secrets_stay_secret_and_reach_only_the_containers_that_use_them(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    envs = {name: dict(e.split("=", 1) for e in c.get("envs", [])) for name, c in containers.items()}
    assert envs["postgres"]["POSTGRES_PASSWORD"] == PASSWORD
    assert PASSWORD in envs["api"]["REGGAETON_SERVING__PREDICTION_LOG_URL"]
    assert envs["api"]["REGGAETON_SERVING__ADMIN_TOKEN"] == TOKEN
    assert PASSWORD in " ".join(containers["mlflow"]["command"])
    # Every input that carries a secret is itself a Pulumi secret (encrypted in state, masked in logs),
    # in the program and on the wire to the engine; inputs without one stay plain.
    assert run.secret["postgres"]["envs"] and run.secret["api"]["envs"]
    assert run.secret["mlflow"]["command"] and not run.secret["mlflow"]["envs"]
    assert not run.secret["api"]["command"]
    wire = run.mocks.secret_inputs(CONTAINER)
    assert wire["mlflow"] == {"command"}
    assert wire["postgres"] == {"envs"}
    assert wire["api"] == {"envs"}
    # Secrets never reach the image build or the resource names.
    everything_else = json.dumps([r.inputs for r in run.mocks.resources if r.typ != CONTAINER])
    assert PASSWORD not in everything_else and TOKEN not in everything_else


def test_missing_secret_fails_the_program() -> None:
    with pytest.raises(Exception, match="dbPassword"):
        run_program({"adminToken": TOKEN}, secret_keys=["adminToken"])


def test_memory_sizes_are_config() -> None:
    run = run_program({**SECRETS, "memoryMb": json.dumps({"api": 3072})}, secret_keys=list(SECRETS))
    containers = run.mocks.of_type(CONTAINER)
    assert containers["api"]["memory"] == 3072
    assert containers["worker"]["memory"] == next(s.memory_mb for s in SERVICES if s.name == "worker")


def test_stack_files_name_known_config_keys_and_hold_no_secret() -> None:
    project = yaml.safe_load((INFRA / "Pulumi.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    dev = yaml.safe_load((INFRA / "Pulumi.dev.yaml").read_text())["config"]
    known = {f"{project['name']}:{v.config_key}" for v in VARIABLES.values()} | {
        f"{project['name']}:memoryMb"
    }
    assert set(dev) <= known
    secret_keys = {f"{project['name']}:{v.config_key}" for v in VARIABLES.values() if v.secret}
    assert not secret_keys & set(dev), "secrets belong in `pulumi config set --secret`, not in the stack file"
    assert set(dev[f"{project['name']}:memoryMb"]) <= {s.name for s in SERVICES}
