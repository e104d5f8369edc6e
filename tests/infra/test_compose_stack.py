"""The compose stack for real: build, converge, predict through the balancer to 2 API replicas, retrain
with its tuning spread over 2 worker containers, promote and kill a replica under load, restart, tear
down; and, with the image it built, `up` refused while a secret holds its example value.

With authentication on: MLflow and Prefect refuse anonymous calls, the serving account cannot move an
alias or register a version, an alias moved by hand (with an account that can) is served by no replica
and reaches the configured webhook (a test receiver container) as an alert, the operator's `reggaeton
promote`, `rollback` and `gate` (credentials from .env) run on the stack's worker end to end (the gate
judges the labelled traffic sent through the balancer: the stack's Postgres log, not the host's), and no
application container holds the Postgres superuser password.

Needs a Docker engine (locally: skipped with the reason; under CI=true: a failure). `.ci/run` prepares one.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import getpass
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from images_ready import wait_for_images
from latency_support import slower_than_the_bound
from mlflow.exceptions import MlflowException
from stack_secrets import secret_values

from adapters.registry import logged_model_id, set_monitoring_state
from flows.promote import GATE_ARTIFACTS
from infra.services import SECRET_CHECK, SERVICES, SUPERUSER_HOLDERS
from infra.services import service as table_service
from reggaeton.data import synthetic_dataset
from reggaeton.names import (
    CHALLENGER,
    CLIENT_HEADER,
    GATE_DEPLOYMENT,
    MODEL_NAME,
    PROMOTE_DEPLOYMENT,
    REPLICA_HEADER,
    TUNE_DEPLOYMENT,
    TUNING_POOL,
    Tag,
)
from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES, INVALID_EXAMPLE_SONG, TARGET

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3000)]

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_DEPLOYMENT = "train-and-promote"
UP_TIMEOUT_S = 2400  # first build included
READY_TIMEOUT_S = 300
TRAIN_TIMEOUT_S = 1200
API_REPLICAS = 2
# The webhook of this test: a receiver container on the stack's network (WEBHOOK_URL points at it).
TEST_RECEIVER = "test-receiver"


def compose_command() -> list[str] | None:
    """`docker compose` (v2) when the plugin is there, else `docker-compose` (v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def engine_problem() -> str | None:
    """Why the stack cannot run here, or None."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine is reachable (`docker info` failed)"
    return None


PROJECT_PREFIX = "reggaeton-test-"


def _docker_out(*args: str) -> str:
    found = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300, check=False)
    return found.stdout


def remove_stale_projects() -> list[str]:
    """Remove what this module's earlier runs left behind when their pytest process was killed.

    A project is named after the pytest process that started it; once that process is gone nothing will
    take it down, and its containers (restarted with the engine) would take CPU and memory from this run.
    """
    containers = [
        line.split("\t") for line in _docker_out("ps", "-a", "--format", "{{.ID}}\t{{.Names}}").splitlines()
    ]
    stale: dict[str, list[str]] = {}
    for container_id, name in containers:
        # Compose v1 names a container PROJECT_SERVICE_N, v2 PROJECT-SERVICE-N; the receiver is
        # PROJECT-test-receiver.
        found = re.match(rf"({PROJECT_PREFIX}(\d+))[-_]", name)
        if found and not Path(f"/proc/{found[2]}").exists():
            stale.setdefault(found[1], []).append(container_id)
    if not stale:
        return []
    _docker_out("rm", "-f", *(i for ids in stale.values() for i in ids))
    for kind in ("network", "volume"):  # after the containers: one in use is not removed
        owned = [
            n for n in _docker_out(kind, "ls", "--format", "{{.Name}}").split() if n.split("_")[0] in stale
        ]
        if owned:
            _docker_out(kind, "rm", *owned)
    return sorted(stale)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 2.0) -> None:
    """Poll ``check`` until it is true, failing with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Stack:
    """A running compose project and how to reach it."""

    command: list[str]
    env: dict[str, str]
    host_dir: Path
    project: str
    receiver: str = ""  # the test receiver container (the configured webhook)

    def compose(
        self, *args: str, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def url(self, variable: str) -> str:
        return f"http://127.0.0.1:{self.env[variable]}"

    def container(self, service: str) -> str:
        return self.compose("ps", "-a", "-q", service).stdout.strip()

    def containers(self, service: str) -> list[str]:
        """Every container of a service (the replicas of a scaled one)."""
        return self.compose("ps", "-a", "-q", service).stdout.split()

    def inspect(self, target: str, kind: str = "container") -> dict[str, Any]:
        out = subprocess.run(["docker", kind, "inspect", target], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout)[0])

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False, timeout_s=120).stdout

    @property
    def api_headers(self) -> dict[str, str]:
        """What a client of POST /predict sends: the stack's API key."""
        return {"X-API-Key": self.env["API_KEY"]}

    @contextlib.contextmanager
    def prefect(self) -> Iterator[None]:
        """Prefect's client pointed at the stack, with its auth string."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        updates = {
            PREFECT_API_URL: f"{self.url('PREFECT_PORT')}/api",
            PREFECT_API_AUTH_STRING: self.env["PREFECT_AUTH_STRING"],
        }
        with temporary_settings(updates=updates):
            yield

    @contextlib.contextmanager
    def mlflow(self, account: str = "admin") -> Iterator[Any]:
        """An MlflowClient of the stack's server acting as ``account`` (its password from .env)."""
        from mlflow import MlflowClient

        password = self.env[f"MLFLOW_{account.upper()}_PASSWORD"]
        saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update({"MLFLOW_TRACKING_USERNAME": account, "MLFLOW_TRACKING_PASSWORD": password})
        try:
            yield MlflowClient(tracking_uri=self.url("MLFLOW_PORT"), registry_uri=self.url("MLFLOW_PORT"))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def project_stack(command: list[str], project: str, env: dict[str, str], env_file: Path) -> Stack:
    """A compose project of the repository's compose file, its ``.env`` written from ``env``."""
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    full = [*command, "--project-name", project, "--project-directory", str(REPO_ROOT)]
    full += ["--env-file", str(env_file), "--file", str(REPO_ROOT / "docker-compose.yml")]
    # The host command line reads .env from its working directory: the folder of this .env.
    return Stack(command=full, env=env, host_dir=env_file.parent, project=project)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    problem = engine_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the compose stack, but {problem} (run scripts/docker-offline.sh)")
        pytest.skip(f"compose stack test skipped: {problem}")
    command = compose_command()
    assert command is not None
    wait_for_images()  # CI may still be building the stand-in base images beside the tests
    stale = remove_stale_projects()
    if stale:
        print(f"\nremoved the compose projects of killed earlier runs: {', '.join(stale)}")
    project = f"{PROJECT_PREFIX}{os.getpid()}"
    env = {
        **secret_values(secrets.token_urlsafe(12)),
        "POSTGRES_USER": "reggaeton",
        # The optional ones set too, so their wiring is tested: /predict requires the key, alerts go to a
        # receiver container of this test (started once the stack's network exists).
        "API_KEY": secrets.token_urlsafe(16),
        "WEBHOOK_URL": f"http://{TEST_RECEIVER}:8765/alerts",
        "IMAGE_TAG": os.environ.get("REGGAETON_TEST_IMAGE_TAG", "test"),
        "MLFLOW_PORT": str(free_port()),
        "PREFECT_PORT": str(free_port()),
        "API_PORT": str(free_port()),
        "API_REPLICAS": str(API_REPLICAS),
        "TRAINING_TRIALS": "3",
    }
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    running = project_stack(command, project, env, env_file)
    receiver = f"{project}-{TEST_RECEIVER}"
    try:
        started = time.monotonic()
        up = running.compose("up", "-d", "--build", timeout_s=UP_TIMEOUT_S, check=False)
        print(f"\n`up -d --build` took {time.monotonic() - started:.0f}s")
        if up.returncode != 0:
            pytest.fail(f"docker-compose up failed:\n{up.stderr[-4000:]}\n{running.logs()}")
        network = next(
            iter(running.inspect(running.container("api").split()[0])["NetworkSettings"]["Networks"])
        )
        subprocess.run(
            [
                *("docker", "run", "-d", "--no-healthcheck", "--name", receiver, "--network", network),
                *("--network-alias", TEST_RECEIVER, f"reggaeton-mlops:{env['IMAGE_TAG']}"),
                *("python", "-m", "embedded.receiver", "--host", "0.0.0.0", "--port", "8765"),
                *("--file", "/tmp/alerts.jsonl"),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        running.receiver = receiver
        yield running
    finally:
        subprocess.run(["docker", "rm", "-f", receiver], capture_output=True, timeout=120, check=False)
        running.compose(
            "down", "--volumes", "--remove-orphans", "--timeout", "20", check=False, timeout_s=600
        )


def ready(stack: Stack) -> bool:
    try:
        return httpx.get(f"{stack.url('API_PORT')}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def predict(stack: Stack, songs: list[dict[str, float]]) -> httpx.Response:
    return httpx.post(f"{stack.url('API_PORT')}/predict", json=songs, timeout=30, headers=stack.api_headers)


@dataclass(frozen=True)
class Answer:
    """One request of a :class:`Load`: when it ended, its status (0: no HTTP answer), who answered what."""

    at: float  # time.monotonic()
    status: int
    replica: str = ""
    version: str = ""
    prediction_id: str = ""
    detail: str = ""


class Load:
    """Bounded loopback load through the balancer: ``threads`` clients, one song a request, until stopped."""

    def __init__(self, stack: Stack, threads: int = 4, pause_s: float = 0.01, max_s: float = 180) -> None:
        self.url = stack.url("API_PORT")
        self.headers = stack.api_headers
        self.answers: list[Answer] = []  # list.append is atomic: the threads share it
        self._stop = threading.Event()
        self._pause_s, self._max_s = pause_s, max_s
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}") for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        deadline = time.monotonic() + self._max_s
        with httpx.Client(base_url=self.url, timeout=5.0, headers=self.headers) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.post("/predict", json=EXAMPLE_SONGS[0])
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(time.monotonic(), 0, detail=f"{type(exc).__name__}: {exc}"))
                    continue
                replica = response.headers.get(REPLICA_HEADER, "")
                if response.status_code == 200:
                    (prediction,) = response.json()["predictions"]
                    answer = Answer(
                        time.monotonic(), 200, replica, str(prediction["model_version"]), prediction["id"]
                    )
                else:
                    answer = Answer(
                        time.monotonic(), response.status_code, replica, detail=response.text[:200]
                    )
                self.answers.append(answer)
                time.sleep(self._pause_s)

    @property
    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def latest_versions(self) -> dict[str, str]:
        """The version each replica served in its latest answer."""
        latest: dict[str, str] = {}
        for answer in sorted(self.ok, key=lambda a: a.at):
            latest[answer.replica] = answer.version
        return latest


def registry_versions(stack: Stack) -> list[int]:
    with stack.mlflow() as client:
        return sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'"))


def test_stack_converges_with_every_service_healthy(stack: Stack) -> None:
    assert len(stack.containers("api")) == API_REPLICAS
    for service in SERVICES:
        for container in stack.containers(service.name):
            if service.one_shot:
                state = stack.inspect(container)["State"]
                assert (state["Status"], state["ExitCode"]) == ("exited", 0), (service.name, stack.logs())
            else:
                # `up -d` waits only for what something depends on; a leaf may still be starting.
                wait_for(
                    f"{service.name} to be healthy",
                    lambda c=container: stack.inspect(c)["State"]["Health"]["Status"] == "healthy",
                    READY_TIMEOUT_S,
                )


def test_predictions_through_loopback(stack: Stack) -> None:
    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    response = predict(stack, list(EXAMPLE_SONGS))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(EXAMPLE_SONGS)
    assert all(0.0 <= p["probability"] <= 1.0 and p["model_version"] for p in predictions)
    invalid = predict(stack, [dict(INVALID_EXAMPLE_SONG)])
    assert invalid.status_code == 422 and "loudness" in invalid.text


def _scale_workers(stack: Stack, count: int) -> None:
    stack.compose(
        "up", "-d", "--no-build", "--no-recreate", "--scale", f"worker={count}", "worker", timeout_s=300
    )


def _worker_logs(stack: Stack, lines: int = 300) -> str:
    """What the worker containers printed last: a failure's evidence (runs taken, a child that exited)."""
    command = ("logs", "--no-color", "--timestamps", "--tail", str(lines), "worker")
    return stack.compose(*command, check=False, timeout_s=120).stdout


def _run_histories(stack: Stack, deployment: str) -> str:
    """Each run of a deployment with its states in order (did a run Crashed as stranded ever run?)."""
    from prefect.client.orchestration import get_client

    from adapters.prefect_api import deployment_runs, find_deployment

    lines = []
    with stack.prefect(), get_client(sync_client=True) as client:
        found = find_deployment(client, deployment)
        for run in deployment_runs(client, found) if found is not None else []:
            states = sorted(client.read_flow_run_states(run.id), key=lambda state: state.timestamp)
            lines.append(f"{run.name}: " + " ".join(f"{s.name}@{s.timestamp:%H:%M:%S}" for s in states))
    return "\n".join([f"runs of {deployment}:", *lines])


def _evidence(stack: Stack, *deployments: str) -> str:
    """A compose failure's evidence: the deployments' run histories and the workers' last lines."""
    return "\n".join([*(_run_histories(stack, name) for name in deployments), _worker_logs(stack)])


def _online_tuning_workers(stack: Stack) -> int:
    from adapters.prefect_api import online_workers

    with stack.prefect():
        return len(online_workers(TUNING_POOL))


def test_training_flow_spreads_its_tuning_over_two_workers_and_registers_one_version(stack: Stack) -> None:
    """The issue's retrain: 2 worker containers, parallel_workers=2: trials ran on both (their MLflow
    records say which), exactly one version registered, the gate's decision recorded on it."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    _scale_workers(stack, 2)
    try:
        wait_for("2 tuning workers online", lambda: _online_tuning_workers(stack) == 2, READY_TIMEOUT_S)
        hosts = {stack.inspect(c)["Config"]["Hostname"] for c in stack.containers("worker")}
        assert len(hosts) == 2
        before = registry_versions(stack)
        with stack.prefect():
            with get_client(sync_client=True) as client:
                deployments = client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[TRAIN_DEPLOYMENT]))
                )
            assert deployments, f"the bootstrap job did not deploy {TRAIN_DEPLOYMENT!r}"
            parameters = {"n_trials": 6, "parallel_workers": 2}
            flow_run = cast(
                FlowRun,
                run_deployment(
                    deployments[0].id, parameters=parameters, timeout=TRAIN_TIMEOUT_S, poll_interval=5
                ),
            )
        assert flow_run.state is not None and flow_run.state.is_completed(), (flow_run.state, stack.logs())
    finally:
        story = _evidence(stack, TUNE_DEPLOYMENT)  # before the second worker goes, with its logs
        _scale_workers(stack, 1)  # the later tests stop and restart the one worker
    after = registry_versions(stack)
    assert len(after) == len(before) + 1 and max(after) > max(before, default=0)

    with stack.mlflow() as client:
        version = client.get_model_version(MODEL_NAME, str(max(after)))
        parent = client.get_run(version.run_id)
        trials = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{version.run_id}'"
        )
    assert version.tags[Tag.FLOW_RUN_ID] and version.run_id
    assert {Tag.DECISION, Tag.DECISION_REASON, Tag.DECIDED_BY, Tag.DECIDED_AT} <= set(version.tags), (
        version.tags
    )
    # The gate's decision is signed by the worker (the training, tuning and gate accounts all did their part).
    assert {Tag.DECISION_RECORD, Tag.DECISION_SIGNATURE} <= set(version.tags)
    assert len(trials) >= 6
    assert {trial.data.tags.get(Tag.WORKER) for trial in trials} == hosts, story


def _reggaeton(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The host's command line against the compose stack: it finds it through .env, nothing else."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("REGGAETON_") and key not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")
    }
    env["REGGAETON_STATE_DIR"] = str(stack.host_dir / "state")
    command = [str(Path(sys.executable).with_name("reggaeton")), "--stack", "compose", *args]
    return subprocess.run(
        command, cwd=stack.host_dir, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _champion(stack: Stack) -> str:
    with stack.mlflow() as client:
        return str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)


def test_promote_under_load_moves_every_replica_without_a_failed_request(stack: Stack) -> None:
    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    champion = _champion(stack)
    others = [str(v) for v in registry_versions(stack) if str(v) != champion]
    assert others, "the training test registers a second version"
    target = others[-1]
    since = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))

    first: list[dict[str, Any]] = []  # GET /model of the first replica seen serving the target

    def served() -> bool:
        # Through the balancer: the replica answering this request, which may not have swapped yet.
        response = httpx.get(f"{stack.url('API_PORT')}/model", timeout=5)
        body = response.json() if response.status_code == 200 else None
        if body is not None and str(body["version"]) == target:
            first.append(body)
        return bool(first)

    with Load(stack) as load:
        time.sleep(1)
        result = _reggaeton(stack, "promote", "--version", target, "--reason", "from the host")
        ended = time.monotonic()
        assert result.returncode == 0, result.stderr[-3000:] + _evidence(stack, PROMOTE_DEPLOYMENT)
        assert _champion(stack) == target
        # A run of the promote-version deployment on the worker, which signed it; its lines, as locally.
        assert f"manual: version {target} promoted (manual promotion: from the host" in result.stdout
        assert result.stdout.rstrip().endswith(f"champion: version {target}"), result.stdout
        wait_for(f"the API to serve version {target}", served, 60, every_s=0.1)
        waited, body = time.monotonic() - ended, first[0]
        # Each replica polls and swaps on its own: both answer with the new version (their header).
        wait_for(
            f"both replicas to answer with version {target}",
            lambda: list(load.latest_versions().values()) == [target] * API_REPLICAS,
            60,
            every_s=0.2,
        )
        time.sleep(1)
    # One poll interval (the default, 5 s) plus the time the API took to load the version.
    assert waited <= 5.0 + float(body["load_seconds"]) + 1.0, (waited, body)
    ok = load.ok
    print(f"\npromote under load: {len(load.answers)} requests, spread {_spread(ok)}")
    assert load.failures == []
    assert len(_spread(ok)) == API_REPLICAS
    # Every 200 is one row in the one Postgres log, written by whichever replica answered.
    answered = {a.prediction_id for a in ok}
    wait_for("every answered prediction in the log", lambda: set(_logged_since(stack, since)) >= answered, 60)
    logged = _logged_since(stack, since)
    assert len(logged) == len(set(logged)) == len(ok)
    assert set(logged) == answered

    status = _reggaeton(stack, "status")
    assert status.returncode == 0, status.stderr[-3000:]
    assert f"API serves version {target}" in status.stdout, status.stdout
    inside = stack.compose("exec", "-T", "worker", "reggaeton", "--help")
    assert "usage: reggaeton" in inside.stdout
    with stack.mlflow() as client:
        promoted = client.get_model_version(MODEL_NAME, target).tags
    assert promoted[Tag.DECIDED_BY] == getpass.getuser()  # the operator on the host, not the worker's user


# Songs the gate test sends: distinct rows (the gate counts a song once), one POST /predict.
LABELLED_SONGS = 200


def _send_labelled_traffic(stack: Stack, songs: int) -> list[str]:
    """Predictions through the balancer, each followed by its true label (POST /feedback): their ids."""
    frame = synthetic_dataset(songs, seed=20_31).frame
    body = [{name: float(row[name]) for name in FEATURE_NAMES} for _, row in frame.iterrows()]
    since = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))
    response = predict(stack, body)
    assert response.status_code == 200, response.text
    ids = [p["id"] for p in response.json()["predictions"]]
    # The label may reach the other replica: it finds the row once the answering one has written it.
    wait_for("the predictions in the log", lambda: set(_logged_since(stack, since)) >= set(ids), 60)
    labeller = {"Authorization": f"Bearer {stack.env['FEEDBACK_TOKEN']}"}
    with httpx.Client(base_url=stack.url("API_PORT"), headers=labeller, timeout=30) as client:
        for prediction_id, label in zip(ids, frame[TARGET].astype(int), strict=True):
            answer = client.post("/feedback", json={"prediction_id": prediction_id, "label": int(label)})
            assert answer.status_code == 200 and answer.json()["created"], answer.text
    return ids


def test_the_gate_from_the_host_runs_on_the_worker_and_judges_the_stacks_labelled_traffic(
    stack: Stack,
) -> None:
    """`reggaeton --stack compose gate` evaluates on the traffic the stack logged and labelled (its
    Postgres): the decision's recent-traffic slice holds every labelled song sent through the balancer.
    Run on the host, the gate would read the host's state folder, where no traffic is."""
    from prefect.client.orchestration import get_client

    from adapters.prefect_api import deployment_runs, find_deployment

    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    champion = _champion(stack)
    challenger = next(str(v) for v in reversed(registry_versions(stack)) if str(v) != champion)
    sent = _send_labelled_traffic(stack, LABELLED_SONGS)
    assert len(set(sent)) == LABELLED_SONGS

    result = _reggaeton(stack, "gate", "--version", challenger)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with stack.mlflow() as client:
        version = client.get_model_version(MODEL_NAME, challenger)
        tags = version.tags
        # The decision's files on the challenger's training run, put there by the promotion account.
        files = {Path(f.path).name for f in client.list_artifacts(version.run_id, GATE_ARTIFACTS)}
    against = f"vs-{champion}"
    assert {f"decision-{against}.md", f"decision-{against}.json"} <= files, files
    detail = json.loads(tags[Tag.DECISION_DETAIL])
    recent = next(s for s in detail["slices"] if s["name"] == "recent-traffic")
    assert recent["rows"] == LABELLED_SONGS, (
        recent,
        result.stdout[-3000:],
        _evidence(stack, PROMOTE_DEPLOYMENT, GATE_DEPLOYMENT),
    )
    assert detail["rows"] >= LABELLED_SONGS  # the overall rule judges them too (with the held-out rows)
    # The lines the local command prints: the decision, the slices (this traffic among them), the champion.
    lines = result.stdout.splitlines()
    decided = f"gate: version {challenger} {tags[Tag.DECISION]} ("
    assert any(line.startswith(decided) for line in lines), result.stdout
    assert any(line.split()[:2] == ["recent-traffic", str(LABELLED_SONGS)] for line in lines), result.stdout
    assert lines[-1] == f"champion: version {_champion(stack)}", result.stdout
    # It ran where the data is: one run of the gate's deployment, with the command's parameters.
    with stack.prefect(), get_client(sync_client=True) as prefect:
        deployment = find_deployment(prefect, GATE_DEPLOYMENT)
        assert deployment is not None
        runs = deployment_runs(prefect, deployment)
    assert [(run.parameters, run.state_name) for run in runs] == [({"version": challenger}, "Completed")]


def test_mlflow_and_prefect_refuse_anonymous_calls_and_their_probes_stay_open(stack: Stack) -> None:
    mlflow, prefect, api = stack.url("MLFLOW_PORT"), f"{stack.url('PREFECT_PORT')}/api", stack.url("API_PORT")
    search = f"{mlflow}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(search, timeout=10).status_code == 401
    assert httpx.get(search, auth=("admin", "not-the-password-1"), timeout=10).status_code == 401
    assert (
        httpx.get(search, auth=("admin", stack.env["MLFLOW_ADMIN_PASSWORD"]), timeout=10).status_code == 200
    )
    assert httpx.get(f"{mlflow}/health", timeout=10).status_code == 200
    assert httpx.post(f"{prefect}/flows/filter", json={}, timeout=10).status_code == 401
    auth_string = base64.b64encode(stack.env["PREFECT_AUTH_STRING"].encode()).decode()
    authorized = {"Authorization": f"Basic {auth_string}"}
    assert httpx.post(f"{prefect}/flows/filter", json={}, headers=authorized, timeout=10).status_code == 200
    assert httpx.get(f"{prefect}/health", timeout=10).status_code == 200
    # The API: a key for /predict, a feedback token distinct from the admin token.
    assert httpx.post(f"{api}/predict", json=EXAMPLE_SONGS[0], timeout=10).status_code == 401
    label = {"prediction_id": "no-such-prediction", "label": 1}
    as_admin = {"Authorization": f"Bearer {stack.env['ADMIN_TOKEN']}"}
    as_labeller = {"Authorization": f"Bearer {stack.env['FEEDBACK_TOKEN']}"}
    assert httpx.post(f"{api}/feedback", json=label, headers=as_admin, timeout=30).status_code == 401
    assert httpx.post(f"{api}/feedback", json=label, headers=as_labeller, timeout=30).status_code == 404


def test_the_serving_account_reads_but_cannot_move_an_alias_or_register_a_version(stack: Stack) -> None:
    from mlflow.exceptions import MlflowException

    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    with stack.mlflow("serving") as client:
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")  # what it needs: reading
        for attempt in (
            lambda: client.set_registered_model_alias(MODEL_NAME, "champion", champion.version),
            lambda: client.create_model_version(
                MODEL_NAME, champion.source, run_id=champion.run_id, model_id=logged_model_id(champion)
            ),
            lambda: client.set_model_version_tag(MODEL_NAME, champion.version, Tag.DECISION_RECORD, "{}"),
        ):
            with pytest.raises(MlflowException, match="403"):
                attempt()
    with stack.mlflow("monitoring") as client, pytest.raises(MlflowException, match="403"):
        client.set_registered_model_alias(MODEL_NAME, "champion", champion.version)


def _degraded_gauges(stack: Stack, version: str) -> set[str | None]:
    """What the replicas' ``reggaeton_champion_degraded`` gauges say of ``version`` ("1.0", "0.0"; None:
    a replica without the gauge for it)."""
    gauge = re.compile(rf'^reggaeton_champion_degraded\{{model_version="{version}"\}} (\S+)$', re.MULTILINE)
    return {
        (found.group(1) if (found := gauge.search(text)) else None) for text in _replica_texts(stack).values()
    }


def test_the_monitors_state_on_the_champion_reaches_every_replica(stack: Stack) -> None:
    """The monitor, as the monitoring account, puts its state on the champion version (a 403 there once
    left every replica's degraded gauge at 0 on this stack); each replica reports it within a poll."""
    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    with stack.mlflow("monitoring") as client:
        version = client.get_model_version_by_alias(MODEL_NAME, "champion").version

        def reported(status: str, since: str, gauge: str) -> bool:
            # Put again at every look (a write only if it changed): the stack's own monitor runs every
            # five minutes and may put its state back meanwhile.
            set_monitoring_state(client, MODEL_NAME, version, status, since)
            return _degraded_gauges(stack, version) == {gauge}

        since = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            wait_for(
                "every replica to report the champion degraded",
                lambda: reported("degraded", since, "1.0"),
                60,
                1,
            )
        finally:
            wait_for("every replica to report it recovered", lambda: reported("ok", "", "0.0"), 60, 1)


def _alerts(stack: Stack) -> list[dict[str, Any]]:
    """What the test receiver (the configured webhook) got."""
    out = subprocess.run(
        ["docker", "exec", stack.receiver, "cat", "/tmp/alerts.jsonl"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


UNAUTHORIZED_GAUGE = "reggaeton_champion_alias_unauthorized"


def test_an_alias_moved_by_hand_is_served_by_no_replica_and_alerts_the_webhook(stack: Stack) -> None:
    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    champion = _champion(stack)
    # An undecided version, and the move: by the training account, which MLflow lets register versions and
    # move aliases alike (EDIT on the model); the signed decision is what it cannot make.
    with stack.mlflow("training") as client:
        model = client.get_model_version(MODEL_NAME, champion)
        undecided = str(
            client.create_model_version(
                MODEL_NAME,
                model.source,
                run_id=model.run_id,
                tags={Tag.THRESHOLD: model.tags[Tag.THRESHOLD]},
                model_id=logged_model_id(model),
            ).version
        )
        moved_at = time.monotonic()
        client.set_registered_model_alias(MODEL_NAME, "champion", undecided)

    def alerted() -> bool:
        return any(
            "without a decision" in a["subject"] and f"'version': '{undecided}'" in a["body"]
            for a in _alerts(stack)
        )

    gauge = f'{UNAUTHORIZED_GAUGE}{{version="{undecided}"}}'
    with Load(stack) as load:
        wait_for("the alert at the configured webhook", alerted, 30, every_s=1)
        alerted_after = time.monotonic() - moved_at
        wait_for(
            "every replica to refuse the alias",
            lambda: all(_metric_or_none(stack, c, gauge) == 1.0 for c in stack.containers("api")),
            30,
            every_s=1,
        )
        time.sleep(1)
    print(f"\nalias moved by hand: alert at the webhook after {alerted_after:.1f} s")
    assert load.failures == []
    assert {a.version for a in load.ok} == {champion}
    assert len(_spread(load.ok)) == API_REPLICAS
    status = _reggaeton(stack, "status")
    assert status.returncode == 0, status.stderr[-3000:]
    assert f"champion decision: NOT AUTHORIZED: version {undecided} has no decision record" in status.stdout
    assert f"API REFUSES the champion alias (version {undecided})" in status.stdout

    # The operator goes back to the last decided champion: a signed rollback, from the host.
    back = _reggaeton(stack, "rollback", "--reason", "alias moved by hand")
    assert back.returncode == 0, back.stderr[-3000:]
    assert _champion(stack) == champion
    assert f"rollback: version {champion} promoted (rollback: alias moved by hand)" in back.stdout
    wait_for(
        "the replicas to stop refusing",
        lambda: all(
            _metric_or_none(stack, container, gauge) is None for container in stack.containers("api")
        ),
        60,
        every_s=1,
    )
    status = _reggaeton(stack, "status")
    assert "auth: MLflow on, Prefect on" in status.stdout, status.stdout
    assert "signature verified (key " in status.stdout
    assert f"alerts: webhook configured ({TEST_RECEIVER})" in status.stdout
    assert f"API serves version {champion}" in status.stdout


def _metric_or_none(stack: Stack, container: str, sample: str) -> float | None:
    out = subprocess.run(
        ["docker", "exec", container, "python", "-c", _REPLICA_METRICS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    try:
        return _metric(out.stdout, sample)
    except AssertionError:
        return None


def _spread(answers: list[Answer]) -> dict[str, int]:
    """Answers per replica."""
    spread: dict[str, int] = {}
    for answer in answers:
        spread[answer.replica] = spread.get(answer.replica, 0) + 1
    return spread


# infra/balancer/haproxy.cfg: a check every second (`inter 1s`), out of rotation after 2 failed ones
# (`fall 2`), each failing within the connect timeout (1 s). So a killed replica receives requests for at
# most 2 x (1 + 1) = 4 s; 1 s more for the client's own clock and thread scheduling.
KILL_BOUND_S = 2 * (1.0 + 1.0) + 1.0


def test_a_killed_replica_costs_failures_only_within_the_health_check_bound(stack: Stack) -> None:
    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    victim = stack.containers("api")[0]
    victim_name = stack.inspect(victim)["Config"]["Hostname"]
    with Load(stack) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        subprocess.run(["docker", "kill", victim], capture_output=True, timeout=60, check=True)
        time.sleep(KILL_BOUND_S + 10)
        victim_down = not stack.inspect(victim)["State"]["Running"]
        # Back: it loads its model from the cache and rejoins once its /ready answers, with no failure.
        restarted_at = time.monotonic()
        subprocess.run(["docker", "start", victim], capture_output=True, timeout=60, check=True)
        wait_for(
            "the restarted replica to answer again",
            lambda: any(a.replica == victim_name and a.at > restarted_at for a in load.ok),
            READY_TIMEOUT_S,
            every_s=0.5,
        )
        time.sleep(2)
    failed = load.failures
    in_window = [a for a in load.answers if killed_at <= a.at <= killed_at + KILL_BOUND_S]
    details = [a.detail or a.status for a in failed[:5]]
    print(
        f"\nreplica killed under load: {len(failed)} failed of {len(in_window)} requests in the "
        f"{KILL_BOUND_S:.0f} s bound, {len(load.answers)} in all: {details}"
    )
    assert all(killed_at <= a.at <= killed_at + KILL_BOUND_S for a in failed), failed
    after = [a for a in load.answers if killed_at + KILL_BOUND_S < a.at < restarted_at]
    assert after and all(a.status == 200 for a in after)
    if victim_down:  # Docker does not restart a killed container (a manual stop); the balancer skipped it
        assert victim_name not in {a.replica for a in after}
    assert {a.replica for a in load.ok if a.at > restarted_at} >= {victim_name}


_WAIT_READY = """
import time, urllib.request
while True:
    try:
        if urllib.request.urlopen("http://127.0.0.1:8000/ready", timeout=1).status == 200:
            break
    except Exception:
        time.sleep(0.02)
print(time.time())
"""


def _started_at(stack: Stack, container: str) -> float:
    """When Docker started the container, in seconds since the epoch."""
    stamp = stack.inspect(container)["State"]["StartedAt"]  # e.g. 2026-12-01T02:30:01.123456789Z
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")


def test_api_serves_again_after_a_restart(stack: Stack) -> None:
    stack.compose("restart", "api", timeout_s=180)
    wait_for("the API to serve again after a restart", lambda: ready(stack), READY_TIMEOUT_S)
    response = predict(stack, [dict(EXAMPLE_SONGS[0])])
    assert response.status_code == 200, response.text
    # A slim replica from container start to /ready, its model from the cache volume (printed for the
    # benchmarks page; not a timed assertion).
    replica = stack.containers("api")[0]
    subprocess.run(["docker", "stop", replica], capture_output=True, timeout=120, check=True)
    subprocess.run(["docker", "start", replica], capture_output=True, timeout=120, check=True)
    probe = subprocess.run(
        ["docker", "exec", replica, "python", "-c", _WAIT_READY], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    startup_s = float(probe.stdout) - _started_at(stack, replica)
    print(f"\nslim API replica: container start to /ready from the model cache {startup_s:.2f} s")


def _healthy(stack: Stack, name: str) -> bool:
    return bool(stack.inspect(stack.container(name))["State"]["Health"]["Status"] == "healthy")


def test_the_worker_stops_cleanly_within_its_grace(stack: Stack) -> None:
    """`docker-compose stop worker`: SIGTERM reaches the worker's process (exec form), which stops the
    Prefect worker, hands back what it was submitting and exits 0 within its grace (137: Docker's SIGKILL)."""
    grace = table_service("worker").stop_grace_s
    began = time.monotonic()
    stack.compose("stop", "worker", timeout_s=grace + 60)
    took = time.monotonic() - began
    state = stack.inspect(stack.container("worker"))["State"]
    logs = stack.compose("logs", "--no-color", "--tail", "40", "worker", check=False).stdout
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), (state, logs)
    assert took < grace, took
    assert "worker: signal 15, stopping" in logs, logs
    stack.compose("start", "worker", timeout_s=120)
    wait_for("the worker to be healthy again", lambda: _healthy(stack, "worker"), READY_TIMEOUT_S)
    # The watchdog runs beside it (healthy: its looks at the Prefect API succeed).
    assert _healthy(stack, "watchdog")


def test_image_is_non_root_and_its_size_is_reported(stack: Stack) -> None:
    for repository in ("reggaeton-mlops", "reggaeton-serving", "reggaeton-balancer"):
        image = stack.inspect(f"{repository}:{stack.env['IMAGE_TAG']}", kind="image")
        print(f"\nimage {repository}:{stack.env['IMAGE_TAG']}: {image['Size'] / 1e6:.0f} MB")
        assert image["Config"]["User"] not in ("", "0", "root"), repository
    uid = stack.compose("exec", "-T", "api", "id", "-u").stdout.strip()
    assert uid not in ("", "0"), uid
    # The database is not published; only 127.0.0.1 bindings exist.
    for service in SERVICES:
        for container in stack.containers(service.name):
            bindings = stack.inspect(container)["HostConfig"]["PortBindings"] or {}
            host_ips = {b["HostIp"] for entries in bindings.values() for b in entries or []}
            assert host_ips <= {"127.0.0.1"}, (service.name, bindings)
            # Only the balancer publishes the API port: the replicas are reached through it.
            assert not (service.name == "api" and bindings), bindings


def test_no_application_container_holds_the_postgres_superuser_password(stack: Stack) -> None:
    superuser = stack.env["POSTGRES_PASSWORD"]
    passwords = [
        value for key, value in stack.env.items() if key.endswith("PASSWORD") or key.endswith("SECRET")
    ]
    seen = set()
    for service in SERVICES:
        for container in stack.containers(service.name):
            inspected = stack.inspect(container)
            config = inspected["Config"]
            environment = "\n".join(config.get("Env") or [])
            command_line = " ".join(
                [*(config.get("Entrypoint") or []), *(config.get("Cmd") or []), *inspected["Args"]]
            )
            if service.name not in SUPERUSER_HOLDERS:
                assert superuser not in environment, service.name
            # No password of any kind on a command line (`ps`, `docker inspect`).
            assert not [p for p in passwords if p in command_line], (service.name, command_line)
            seen.add(service.name)
    assert seen == {s.name for s in SERVICES}  # the one-shot jobs included (exited, still inspectable)

    # The API's role inserts and reads the log's rows, nothing else.
    def as_role(role: str, database: str, sql: str) -> subprocess.CompletedProcess[str]:
        return stack.compose(
            "exec", "-T", "postgres", "psql", "-U", role, "-d", database, "-c", sql, check=False
        )

    assert as_role("api", "predictions", "SELECT count(*) FROM predictions").returncode == 0
    for sql in ("DELETE FROM feedback", "UPDATE predictions SET model_version = 'x'", "DROP TABLE feedback"):
        refused = as_role("api", "predictions", sql)
        assert refused.returncode != 0 and (
            "permission denied" in refused.stderr or "must be owner" in refused.stderr
        )
    denied = as_role("api", "mlflow", "SELECT 1")
    assert denied.returncode != 0 and "permission denied for database" in denied.stderr
    # The worker runs retention (issue 30: it deletes archived rows, restores them), so it may change rows,
    # never the schema: only the owner's migrations may.
    refused = as_role("worker", "predictions", "DROP TABLE feedback")
    assert refused.returncode != 0 and "must be owner" in refused.stderr


def test_an_example_secret_stops_compose_before_any_service_starts(stack: Stack, tmp_path: Path) -> None:
    # `cp .env.example .env` with one secret left as it is; the image is the one the stack built.
    env = {**stack.env, "ADMIN_TOKEN": "change-me"}
    command = compose_command()
    assert command is not None
    refused = project_stack(command, f"reggaeton-refused-{os.getpid()}", env, tmp_path / ".env")
    try:
        up = refused.compose("up", "-d", "--no-build", "postgres", check=False, timeout_s=300)
        assert up.returncode != 0, up.stdout + up.stderr
        assert SECRET_CHECK in up.stdout + up.stderr
        logs = refused.compose("logs", "--no-color", SECRET_CHECK, check=False, timeout_s=120).stdout
        assert "ADMIN_TOKEN is still the example value" in logs, logs
        postgres = refused.container("postgres")
        assert not postgres or not refused.inspect(postgres)["State"]["Running"]
    finally:
        refused.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False, timeout_s=300)


# A session of the system's own engine (adapters.prediction_log.make_engine) that holds a row's lock in an
# open transaction, in a container of its own that the test can cut off the network.
_HOLD_A_ROW = """
import os, time
from adapters.prediction_log import make_engine
with make_engine(os.environ["PROBE_URL"]).connect() as connection:
    connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS split_probe (id text PRIMARY KEY)")
    connection.commit()
    connection.exec_driver_sql("INSERT INTO split_probe VALUES ('held') ON CONFLICT DO NOTHING")
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_session_cut_off_mid_transaction_frees_its_rows_within_a_minute(stack: Stack) -> None:
    # What the next test's writers need after a network split: a replica cut off between its INSERT and its
    # COMMIT leaves a backend holding those rows' locks, and the retry of the same rows (ON CONFLICT on their
    # ids) waits on them. With the server's default keepalive (2 hours) the retry hung past the test's
    # 5 minutes (CI, 2026-12-06); the session's own settings (reggaeton/settings.POSTGRES_SESSION_SETTINGS)
    # make the server end such a backend within ~20 s.
    postgres = stack.container("postgres")
    network = next(iter(stack.inspect(postgres)["NetworkSettings"]["Networks"]))
    image = stack.inspect(stack.containers("api")[0])["Config"]["Image"]
    probe = f"{stack.project}-split-probe"
    user = stack.env["POSTGRES_USER"]
    superuser_url = f"postgresql://{user}:{stack.env['POSTGRES_PASSWORD']}@postgres:5432/postgres"

    def psql(*sql: str) -> subprocess.CompletedProcess[str]:
        commands = [arg for statement in sql for arg in ("-c", statement)]
        return stack.compose(
            "exec", "-T", "postgres", "psql", "-U", user, "-d", "postgres", *commands, check=False
        )

    # The URL reaches the container through the environment, not the command line.
    started = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            probe,
            "--network",
            network,
            "-e",
            "PROBE_URL",
            "--entrypoint",
            "python",
            image,
            "-c",
            _HOLD_A_ROW,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PROBE_URL": superuser_url},
    )
    assert started.returncode == 0, started.stderr
    try:
        wait_for("the probe to hold its row", lambda: "held" in _docker_out("logs", probe), 60, every_s=0.5)
        _docker("network", "disconnect", network, probe)
        # Without the session settings the orphaned backend keeps the lock and this times out.
        taken = psql(
            "SET lock_timeout = '60s'", "INSERT INTO split_probe VALUES ('held') ON CONFLICT DO NOTHING"
        )
        assert taken.returncode == 0, taken.stderr
        assert "INSERT 0 1" in taken.stdout  # the cut-off transaction was rolled back, not committed
        orphans = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO split_probe%'"
        assert psql(orphans).stdout.split()[2] == "0"  # psql's table: header, rule, the count
    finally:
        _docker_out("rm", "-f", probe)
        psql("DROP TABLE IF EXISTS split_probe")


OUTAGE_S = 30.0
# Long enough for a write on a connection to a server that no longer answers to fail (libpq's
# tcp_user_timeout, 10 s, in reggaeton/settings.POSTGRES_CONNECT_ARGS); without it, TCP retries ~15 min.
PARTITION_S = 16.0
# A request that waited on the database would fail while Postgres is stopped, or wait out libpq's 10 s
# tcp_user_timeout in the partition: each replica's latency histogram says whether any did
# (tests/latency_support.py). The clients' timeout only bounds a hang: as the detector (1 s, then 4 s) it
# measured this 2-core machine's stalls under CI load too (CI 25: 3 of ~12,000 requests past 1 s).
ANSWER_TIMEOUT_S = 30.0

_REPLICA_METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode())
"""


def _log_query(stack: Stack, query: str) -> list[str]:
    """The rows of a query on the Postgres log, one line each (the database is not published)."""
    user = stack.env["POSTGRES_USER"]
    out = stack.compose("exec", "-T", "postgres", "psql", "-U", user, "-d", "predictions", "-tAc", query)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _logged_since(stack: Stack, since: str) -> list[str]:
    """Prediction ids in the Postgres log created at or after ``since``."""
    return _log_query(stack, f"SELECT id FROM predictions WHERE created_at >= '{since}'")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _api_metric(stack: Stack, name: str) -> float:
    """A metric of whichever replica the balancer picks."""
    return _metric(httpx.get(f"{stack.url('API_PORT')}/metrics", timeout=10).text, name)


def _replica_texts(stack: Stack) -> dict[str, str]:
    """Every API replica's /metrics, read inside each container (the balancer picks one)."""
    texts = {}
    for container in stack.containers("api"):
        out = subprocess.run(
            ["docker", "exec", container, "python", "-c", _REPLICA_METRICS],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        texts[container] = out.stdout
    return texts


def _replica_metrics(stack: Stack, name: str) -> dict[str, float]:
    """A metric of every API replica."""
    return {container: _metric(text, name) for container, text in _replica_texts(stack).items()}


def _docker(*args: str) -> None:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"docker {' '.join(args)}: {out.stderr}"


def _live_on_every_replica(stack: Stack, version: str, share: str) -> bool:
    """Every replica shadows ``version`` with this canary share, and has shadow-scored rows."""
    texts = _replica_texts(stack).values()
    challenger = f'reggaeton_challenger_info{{model_version="{version}",share="{share}"}} 1.0'
    scored = re.compile(r'^reggaeton_shadow_rows_total\{outcome="scored"\} ([1-9][\d.]*)', re.MULTILINE)
    return all(challenger in text.splitlines() and scored.search(text) for text in texts)


def _fallbacks(stack: Stack) -> float:
    """Canary requests the champion answered (the canary raised, was late, or answered nonsense)."""
    fallback = re.compile(r'^reggaeton_canary_requests_total\{outcome="fallback_\w+"\} (\S+)$', re.MULTILINE)
    return sum(float(count) for text in _replica_texts(stack).values() for count in fallback.findall(text))


def _client_versions(stack: Stack, clients: list[str]) -> dict[str, set[tuple[str, str]]]:
    """Each client key's (replica, version) answers: two requests per key, through the balancer."""
    seen: dict[str, set[tuple[str, str]]] = {client: set() for client in clients}
    with httpx.Client(base_url=stack.url("API_PORT"), headers=stack.api_headers, timeout=30) as http:
        for _ in range(2):
            for client in clients:
                response = http.post("/predict", json=EXAMPLE_SONGS[0], headers={CLIENT_HEADER: client})
                assert response.status_code == 200, response.text
                version = str(response.json()["predictions"][0]["model_version"])
                seen[client].add((response.headers[REPLICA_HEADER], version))
    return seen


def test_operators_shadow_and_canary_a_version_from_the_host_on_every_replica(stack: Stack) -> None:
    """`reggaeton --stack compose shadow --start|shadow|canary start|canary abort` run on the worker (its
    key signs), and every replica follows: each shadow-scores the version under the same prediction ids,
    a client key gets the same model from either replica during the canary, the abort reaches both."""
    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    champion = _champion(stack)
    target = str([v for v in registry_versions(stack) if str(v) != champion][-1])
    since = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))
    try:
        started = _reggaeton(stack, "shadow", "--start", target, "--reason", "try it live")
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-3000:]
        assert (
            f"shadow: version {target} under live evaluation (put under live evaluation by" in started.stdout
        )
        with Load(stack) as load:
            wait_for(
                f"every replica to shadow version {target}",
                lambda: _live_on_every_replica(stack, target, "0"),
                90,
            )
        assert load.failures == [] and {a.version for a in load.ok} == {champion}
        # The shadow's answers sit beside the champion's, under the same prediction ids.
        paired = (
            "SELECT count(*) FROM shadow_batches s "
            "CROSS JOIN LATERAL jsonb_array_elements(s.answers::jsonb) a "
            "JOIN predictions p ON p.id = a.value ->> 0 "
            f"WHERE s.model_version = '{target}' AND p.model_version = '{champion}' "
            f"AND p.created_at >= '{since}'"
        )
        wait_for("shadow answers paired with the champion's", lambda: _log_query(stack, paired) != ["0"], 60)
        report = _reggaeton(stack, "shadow")
        assert report.returncode == 0 and f"version {target}" in report.stdout, (
            report.stdout + report.stderr[-2000:]
        )

        canary = _reggaeton(stack, "canary", "start")
        assert canary.returncode == 0, canary.stdout[-2000:] + canary.stderr[-3000:]
        assert f"canary start: version {target} answers 5% of requests" in canary.stdout
        wait_for(
            "every replica at the canary's first step",
            lambda: _live_on_every_replica(stack, target, "0.05"),
            90,
        )
        clients = [f"client-{i}" for i in range(200)]
        before = _fallbacks(stack)
        seen = _client_versions(stack, clients)
        # Sticky across replicas: each key was answered by one model, whichever replica took it, except
        # where the champion answered a canary request the canary did not answer in time (counted).
        mixed = [client for client, answers in seen.items() if len({v for _, v in answers}) > 1]
        assert len(mixed) <= _fallbacks(stack) - before, seen
        assert len({replica for answers in seen.values() for replica, _ in answers}) == API_REPLICAS
        canaries = [client for client, answers in seen.items() if target in {v for _, v in answers}]
        assert 0 < len(canaries) < 40, len(canaries)  # 5 % of 200 keys: 10 expected

        aborted = _reggaeton(stack, "canary", "abort", "--reason", "seen enough")
        assert aborted.returncode == 0, aborted.stdout[-2000:] + aborted.stderr[-3000:]
        assert f"canary abort: version {target} answers 0% of requests" in aborted.stdout
        wait_for("every replica back to shadow only", lambda: _live_on_every_replica(stack, target, "0"), 90)
        after = _client_versions(stack, canaries)
        assert all({v for _, v in answers} == {champion} for answers in after.values()), after
    finally:
        with stack.mlflow() as client, contextlib.suppress(MlflowException):  # later tests: no challenger
            client.delete_registered_model_alias(MODEL_NAME, CHALLENGER)


def test_a_promotion_and_its_rollback_complete_with_the_promotion_accounts_rights(stack: Stack) -> None:
    """From the host: promote another version, then roll back. When the restored champion has no earlier
    one, the rollback would delete the previous-champion alias, which the promotion account may not do:
    the rollback still completes (the alias stays, logged)."""
    champion = _champion(stack)
    target = str([v for v in registry_versions(stack) if str(v) != champion][-1])
    promoted = _reggaeton(stack, "promote", "--version", target, "--reason", "for a rollback")
    assert promoted.returncode == 0, promoted.stdout[-2000:] + promoted.stderr[-3000:]
    assert _champion(stack) == target
    back = _reggaeton(stack, "rollback", "--reason", "back again")
    assert back.returncode == 0, back.stdout[-2000:] + back.stderr[-3000:]
    assert f"rollback: version {champion} promoted (rollback: back again" in back.stdout, back.stdout
    assert _champion(stack) == champion


def test_the_api_keeps_answering_while_postgres_is_stopped_or_unreachable(stack: Stack) -> None:
    # Last in the module: Postgres also backs MLflow and Prefect, which only need to come back afterwards.
    # Stopped: the server ends its connections. Unreachable (taken off the network, as a crashed host or a
    # network split looks): nothing answers and nothing resets the connections, so a write would hang.
    wait_for("the API to serve a champion", lambda: ready(stack), READY_TIMEOUT_S)
    since = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        url, headers = stack.url("API_PORT"), stack.api_headers
        with httpx.Client(base_url=url, timeout=ANSWER_TIMEOUT_S, headers=headers) as client:
            for _ in range(40_000):  # bounded in count and by the stop event
                if stop.is_set():
                    return
                try:
                    response = client.post("/predict", json=EXAMPLE_SONGS[0])
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code == 200:
                    answered.extend(p["id"] for p in response.json()["predictions"])
                else:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                time.sleep(0.01)

    def ready_for(seconds: float) -> list[bool]:
        during = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            during.append(ready(stack))
            time.sleep(1)
        return during

    postgres = stack.container("postgres")
    network = next(iter(stack.inspect(postgres)["NetworkSettings"]["Networks"]))
    slow_before = {c: slower_than_the_bound(text) for c, text in _replica_texts(stack).items()}
    workers = [threading.Thread(target=load, name=f"load-{i}") for i in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(2)
        stack.compose("stop", "postgres", timeout_s=120)
        ready_during = ready_for(OUTAGE_S)
        down = _api_metric(stack, "reggaeton_prediction_log_database_up")
        stack.compose("start", "postgres", timeout_s=120)
        wait_for(
            "every replica to write to Postgres again",
            lambda: set(_replica_metrics(stack, "reggaeton_prediction_log_database_up").values()) == {1},
            READY_TIMEOUT_S,
        )
        errors_before = _replica_metrics(stack, "reggaeton_prediction_log_write_errors_total")
        _docker("network", "disconnect", network, postgres)
        try:
            ready_during += ready_for(PARTITION_S)
            up_unreachable = _replica_metrics(stack, "reggaeton_prediction_log_database_up")
            errors_unreachable = _replica_metrics(stack, "reggaeton_prediction_log_write_errors_total")
        finally:
            _docker("network", "connect", "--alias", "postgres", network, postgres)
        time.sleep(2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    # Every replica writes its own spool back; /metrics answers for one replica at a time, so wait on
    # the log itself.
    wait_for(
        "the replicas to write their spools to Postgres",
        lambda: set(_logged_since(stack, since)) >= set(answered),
        READY_TIMEOUT_S,
    )
    logged = _logged_since(stack, since)
    slow_after = {c: slower_than_the_bound(text) for c, text in _replica_texts(stack).items()}
    assert failures == []
    assert slow_after == slow_before  # no replica took ANSWER_BOUND_S on any request: none waited on Postgres
    assert all(ready_during)  # the spool took every row: ready all along
    assert down == 0
    assert set(up_unreachable.values()) == {0}, up_unreachable
    # Each replica's writes failed (not hung) while nothing answered them.
    assert all(errors_unreachable[c] > errors_before[c] for c in errors_before), (
        errors_before,
        errors_unreachable,
    )
    assert len(answered) > 100
    assert len(logged) == len(set(logged)) == len(answered)
    assert set(logged) == set(answered)
