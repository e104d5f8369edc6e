"""The Pulumi program under Pulumi's mocks: resources, their wiring, config and secret handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pulumi_harness import (
    APP_IMAGE_ID,
    CONTAINER,
    IMAGE,
    NETWORK,
    REMOTE_IMAGE,
    VOLUME,
    RecordingMocks,
    Run,
    run_program,
    service_of,
)
from stack_secrets import SECRET_CONFIG_KEYS, config_values

from infra.services import (
    APP_IMAGE,
    BUILT_IMAGES,
    POSTGRES_FILES,
    SERVICES,
    SUPERUSER_HOLDERS,
    TRAIN_TIMEOUT_S,
    TUNING_POOL,
    VARIABLES,
    VOLUMES,
    WORK_POOL,
)
from infra.services import service as table_service
from reggaeton import names

SECRETS = config_values("under-test")
PASSWORD = SECRETS["dbPassword"]  # the Postgres superuser's
TOKEN = SECRETS["adminToken"]
API_DB_PASSWORD = SECRETS["apiDbPassword"]
INFRA = Path(__file__).resolve().parents[2] / "infra"


@pytest.fixture(scope="module")
def run() -> Run:
    return run_program({**SECRETS, "imageTag": "t1", "apiPort": "18000"}, secret_keys=SECRET_CONFIG_KEYS)


REPLICATED = {s.name for s in SERVICES if s.replicas is not None}


def containers_of(run: Run, name: str) -> dict[str, dict[str, object]]:
    """The declared containers of one service of the table (its replicas, or itself)."""
    return {c: i for c, i in run.mocks.of_type(CONTAINER).items() if service_of(c, REPLICATED) == name}


def test_declares_the_images_one_network_the_volumes_and_the_containers(run: Run) -> None:
    mocks = run.mocks
    images = mocks.of_type(IMAGE)
    assert sorted(images) == sorted(f"{image}-image" for image in BUILT_IMAGES)
    for image, (repository, target) in BUILT_IMAGES.items():
        inputs = images[f"{image}-image"]
        assert inputs["imageName"] == f"{repository}:t1"
        assert inputs["skipPush"] is True
        assert inputs["build"]["target"] == target
        assert Path(inputs["build"]["dockerfile"]).name == "Dockerfile"
        assert (Path(inputs["build"]["context"]) / "Dockerfile").is_file()
    assert list(mocks.of_type(REMOTE_IMAGE).values()) == [{"name": "postgres:15", "keepLocally": True}]
    assert [n["name"] for n in mocks.of_type(NETWORK).values()] == ["reggaeton-dev-reggaeton"]
    assert sorted(v["name"] for v in mocks.of_type(VOLUME).values()) == sorted(
        f"reggaeton-dev-{v}" for v in VOLUMES
    )
    assert sorted(mocks.of_type(CONTAINER)) == sorted(
        [s.name for s in SERVICES if s.name not in REPLICATED] + ["api-1", "api-2", "worker-1"]
    )


def test_api_replicas_come_from_config_and_share_the_alias_the_balancer_resolves() -> None:
    run = run_program({**SECRETS, "apiReplicas": "3"}, secret_keys=SECRET_CONFIG_KEYS)
    replicas = containers_of(run, "api")
    assert sorted(replicas) == ["api-1", "api-2", "api-3"]
    for inputs in replicas.values():
        assert inputs["networksAdvanced"] == [{"name": "reggaeton-dev-reggaeton", "aliases": ["api"]}]
        assert not inputs.get("ports")  # only the balancer publishes the API port
        assert inputs["image"] == "sha256:serving-image"
    # The balancer starts once every replica is healthy (Pulumi waits for each).
    assert run.depends_on["balancer"] == ["api-1", "api-2", "api-3"]
    with pytest.raises(Exception, match="at least one replica"):
        run_program({**SECRETS, "apiReplicas": "0"}, secret_keys=SECRET_CONFIG_KEYS)


def test_worker_replicas_come_from_config_each_serving_both_pools() -> None:
    run = run_program({**SECRETS, "workerReplicas": "3"}, secret_keys=SECRET_CONFIG_KEYS)
    workers = containers_of(run, "worker")
    assert sorted(workers) == ["worker-1", "worker-2", "worker-3"]
    for inputs in workers.values():
        command = inputs["command"]
        assert command[command.index("--pool") + 1] == WORK_POOL
        assert command[command.index("--tuning-pool") + 1] == TUNING_POOL
        assert not inputs.get("ports")
    with pytest.raises(Exception, match="at least one replica"):
        run_program({**SECRETS, "workerReplicas": "0"}, secret_keys=SECRET_CONFIG_KEYS)


def test_containers_are_wired_to_the_network_image_volumes_and_dependencies(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    for container, inputs in containers.items():
        service = table_service(service_of(container, REPLICATED))
        assert inputs["networksAdvanced"] == [{"name": "reggaeton-dev-reggaeton", "aliases": [service.name]}]
        # A built image by its id (what the provider reports for a local image), never by its tag.
        if service.image == APP_IMAGE:
            assert inputs["image"] == APP_IMAGE_ID
        elif service.image in BUILT_IMAGES:
            assert inputs["image"] == f"sha256:{service.image}-image"
        else:
            assert inputs["image"] == service.image
        assert sorted({service_of(d, REPLICATED) for d in run.depends_on[container]}) == sorted(
            service.depends_on
        )
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
    for name in ("postgres", "postgres-roles"):
        assert containers[name]["uploads"] == [
            {"file": path, "content": (INFRA.parent / source).read_text()}
            for path, source in POSTGRES_FILES.items()
        ]


def test_ports_come_from_config_and_bind_only_to_loopback(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    published = {name: c.get("ports", []) for name, c in containers.items() if c.get("ports")}
    assert published == {
        "mlflow": [{"internal": 5000, "external": 5000, "ip": "127.0.0.1"}],
        "prefect-server": [{"internal": 4200, "external": 4200, "ip": "127.0.0.1"}],
        "balancer": [{"internal": 8000, "external": 18000, "ip": "127.0.0.1"}],
    }


def test_secrets_stay_secret_and_reach_only_the_containers_that_use_them(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    envs = {name: dict(e.split("=", 1) for e in c.get("envs", [])) for name, c in containers.items()}
    assert envs["postgres"]["POSTGRES_PASSWORD"] == PASSWORD
    assert API_DB_PASSWORD in envs["api-1"]["REGGAETON_SERVING__PREDICTION_LOG_URL"]
    assert envs["api-1"]["REGGAETON_SERVING__ADMIN_TOKEN"] == TOKEN
    assert envs["api-1"]["REGGAETON_SIGNING__PUBLIC_KEYS"] == SECRETS["decisionVerifyKey"]
    assert envs["worker-1"]["REGGAETON_SIGNING__PRIVATE_KEY"] == SECRETS["decisionSigningKey"]
    # Only the database and its roles job hold the superuser's password; no password on a command line;
    # the API holds no private key and no admin password of MLflow.
    for name, inputs in containers.items():
        if service_of(name, REPLICATED) not in SUPERUSER_HOLDERS:
            assert PASSWORD not in json.dumps(envs[name]), name
        assert not any(value in " ".join(inputs.get("command") or []) for value in SECRETS.values()), name
    assert "REGGAETON_SIGNING__PRIVATE_KEY" not in envs["api-1"]
    assert SECRETS["mlflowAdminPassword"] not in json.dumps(envs["api-1"])
    # Every input that carries a secret is itself a Pulumi secret (encrypted in state, masked in logs),
    # in the program and on the wire to the engine; inputs without one stay plain.
    assert run.secret["postgres"]["envs"] and run.secret["api-1"]["envs"] and run.secret["mlflow"]["envs"]
    assert not run.secret["mlflow"]["command"] and not run.secret["api-1"]["command"]
    wire = run.mocks.secret_inputs(CONTAINER)
    assert wire["mlflow"] == wire["postgres"] == wire["api-1"] == {"envs"}
    assert wire["receiver"] == set()  # it holds no secret
    # Secrets never reach the image build or the resource names.
    everything_else = json.dumps([r.inputs for r in run.mocks.resources if r.typ != CONTAINER])
    assert PASSWORD not in everything_else and TOKEN not in everything_else


def test_the_worker_and_the_watchdog_stop_cleanly(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    worker, watchdog = containers["worker-1"], containers["watchdog"]
    # The worker's wrapper gets SIGTERM (exec form), lets the worker stop within its own grace, hands the
    # runs it was submitting back; Docker waits longer than that, on `docker stop` and on replace/destroy.
    assert worker["command"][:3] == ["python", "-m", "infra.worker"]
    wrapper_grace = float(worker["command"][worker["command"].index("--grace-s") + 1])
    assert worker["stopTimeout"] == worker["destroyGraceSeconds"] >= wrapper_grace + 10
    assert watchdog["command"] == ["python", "-m", "monitoring.watchdog"]
    alive = f"/state/watchdog/{names.WATCHDOG_ALIVE_FILE}"
    assert watchdog["healthcheck"]["tests"] == ["CMD", "python", "-m", "infra.healthcheck", "--alive", alive]
    assert {c["containerPath"] for c in watchdog["volumes"]} == {"/state/watchdog"}
    assert "REGGAETON_STATE_DIR=/state/watchdog" in watchdog["envs"]


def test_missing_secret_fails_the_program() -> None:
    without = {key: value for key, value in SECRETS.items() if key != "dbPassword"}
    with pytest.raises(Exception, match="dbPassword"):
        run_program(without, secret_keys=SECRET_CONFIG_KEYS)


def test_memory_sizes_are_config() -> None:
    run = run_program({**SECRETS, "memoryMb": json.dumps({"api": 3072})}, secret_keys=SECRET_CONFIG_KEYS)
    containers = run.mocks.of_type(CONTAINER)
    assert containers["api-2"]["memory"] == 3072
    assert containers["worker-1"]["memory"] == next(s.memory_mb for s in SERVICES if s.name == "worker")
    # Memory+swap follows: a raised limit never exceeds a stale swap limit (Docker refuses that).
    assert containers["api-2"]["memorySwap"] == 3072


def test_example_secrets_are_refused_naming_the_config_key() -> None:
    with pytest.raises(ValueError, match="config dbPassword is an example value"):
        run_program({**SECRETS, "dbPassword": "change-me"}, secret_keys=SECRET_CONFIG_KEYS)
    with pytest.raises(ValueError, match="config adminToken is an example value"):
        run_program({**SECRETS, "adminToken": "change-me"}, secret_keys=SECRET_CONFIG_KEYS)
    with pytest.raises(ValueError, match="config apiKey is an example value"):  # optional, never an example
        run_program({**SECRETS, "apiKey": "change-me"}, secret_keys=SECRET_CONFIG_KEYS)


def test_a_rebuilt_image_changes_exactly_the_containers_that_run_it() -> None:
    config = {**SECRETS, "imageTag": "t1"}
    first, same = (run_program(config, secret_keys=SECRET_CONFIG_KEYS) for _ in range(2))
    rebuilt = run_program(config, secret_keys=SECRET_CONFIG_KEYS, image_id="sha256:2222")
    # Same config, same image: every resource gets the same inputs (nothing for a second `up` to change).
    # By resource, not by the order of registration, which follows when each one's inputs resolve.
    assert {(r.typ, r.name): r.inputs for r in first.mocks.resources} == {
        (r.typ, r.name): r.inputs for r in same.mocks.resources
    }
    assert len(first.mocks.resources) == len(same.mocks.resources)
    # Same tag, new build: only the containers of the app image see a new image (the provider replaces
    # a container whose image changes); nothing else changes.
    before, after = first.mocks.of_type(CONTAINER), rebuilt.mocks.of_type(CONTAINER)
    for container in before:
        platform = table_service(service_of(container, REPLICATED)).image == APP_IMAGE
        changed = {key for key in before[container] if before[container][key] != after[container][key]}
        assert changed == ({"image"} if platform else set()), container
        if platform:
            assert after[container]["image"] == "sha256:2222"


def needs(job: str) -> set[str]:
    """The services that run only after ``job`` completed successfully, directly or through others."""
    found: set[str] = set()
    for service in SERVICES:  # the table is in dependency order
        if service.depends_on.get(job) == "service_completed_successfully" or found & set(service.depends_on):
            found.add(service.name)
    return found


@pytest.mark.parametrize("job", [s.name for s in SERVICES if s.one_shot])
def test_a_failed_one_shot_job_fails_the_update_and_blocks_what_needs_it(job: str) -> None:
    mocks = RecordingMocks(exit_codes={job: 3})
    with pytest.raises(RuntimeError, match=rf"one-shot job '{job}' exited with code 3") as failure:
        run_program(SECRETS, secret_keys=SECRET_CONFIG_KEYS, mocks=mocks)
    assert f"docker logs reggaeton-dev-{job}" in str(failure.value)
    urn = f"urn:pulumi:dev::reggaeton::docker:index/container:Container::{job}"
    assert f"pulumi up --replace '{urn}'" in str(failure.value)
    created = set(mocks.of_type(CONTAINER))
    assert needs(job) and not needs(job) & created
    assert job in created


def test_a_job_that_exited_0_lets_what_needs_it_start(run: Run) -> None:
    assert needs("bootstrap") == {"api", "balancer"}
    assert {"api-1", "api-2", "balancer", "postgres"} <= set(run.mocks.of_type(CONTAINER))


def test_containers_stop_gracefully_with_explicit_swap(run: Run) -> None:
    containers = run.mocks.of_type(CONTAINER)
    for container, inputs in containers.items():
        service = table_service(service_of(container, REPLICATED))
        assert inputs["destroyGraceSeconds"] == service.stop_grace_s >= 10, container
        assert inputs["memorySwap"] == inputs["memory"] == service.memory_mb, container
    assert containers["postgres"]["destroyGraceSeconds"] >= 60


def test_one_shot_jobs_may_run_longer_than_the_bootstrap_training_timeout(run: Run) -> None:
    for container in run.mocks.of_type(CONTAINER):
        service = table_service(service_of(container, REPLICATED))
        timeouts = run.options[container].custom_timeouts
        if service.one_shot:
            assert timeouts is not None and timeouts.create is not None
            assert timeouts.create.endswith("m") and int(timeouts.create[:-1]) * 60 > TRAIN_TIMEOUT_S
        else:
            assert timeouts is None, service.name


def test_destroy_leaves_the_data_volumes(run: Run) -> None:
    for name in VOLUMES:
        assert run.options[name].retain_on_delete is True, name


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
