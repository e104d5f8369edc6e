"""The container stack as one table: the single source of truth for docker-compose.yml and the Pulumi program.

Values are templates in docker-compose's interpolation syntax (``${NAME}``, ``${NAME:-default}``,
``${NAME:?message}``): docker-compose fills them from ``.env``, the Pulumi program from its config
(`VARIABLES` maps each name to a config key). ``tests/infra`` checks that the compose file and the Pulumi
stack both declare exactly this table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from reggaeton import names

APP_IMAGE = "app"  # the project's platform image (Dockerfile target `platform`), reggaeton-mlops:${IMAGE_TAG}
SERVING_IMAGE = "serving"  # the slim API image (target `serving`), reggaeton-serving:${IMAGE_TAG}
BALANCER_IMAGE = (
    "balancer"  # HAProxy from Debian's packages (target `balancer`), reggaeton-balancer:${IMAGE_TAG}
)
POSTGRES_IMAGE = "postgres:15"
IMAGE_REPOSITORY = "reggaeton-mlops"
# The images built from the Dockerfile: the table's image name -> (repository, build target).
BUILT_IMAGES: dict[str, tuple[str, str]] = {
    APP_IMAGE: (IMAGE_REPOSITORY, "platform"),
    SERVING_IMAGE: ("reggaeton-serving", "serving"),
    BALANCER_IMAGE: ("reggaeton-balancer", "balancer"),
}
IMAGE_TAG = "${IMAGE_TAG:-latest}"
NETWORK = "reggaeton"
WORK_POOL = names.WORK_POOL
TUNING_POOL = names.TUNING_POOL
DATABASES = ("prefect", "mlflow", "predictions", "optuna")
INIT_SQL_PATH = "/docker-entrypoint-initdb.d/10-databases.sql"
# The balancer finds the API replicas by their network alias (Docker's DNS), up to this many
# (HAProxy's server-template); each replica claims one of as many spool subfolders.
MAX_API_REPLICAS = 16
# How long the bootstrap job waits for the first training (its container may run this long, plus deploying).
TRAIN_TIMEOUT_S = 3600

Condition = Literal["service_started", "service_healthy", "service_completed_successfully"]


@dataclass(frozen=True)
class Variable:
    """A value the operator chooses: an ``.env`` entry for compose, a config key for Pulumi."""

    config_key: str
    default: str | None = None  # None: required
    secret: bool = False


# Defaults are repeated inline in the templates (compose needs them there); a test keeps them equal.
VARIABLES: dict[str, Variable] = {
    "POSTGRES_USER": Variable("dbUser", "reggaeton"),
    "POSTGRES_PASSWORD": Variable("dbPassword", secret=True),
    "ADMIN_TOKEN": Variable("adminToken", secret=True),
    "IMAGE_TAG": Variable("imageTag", "latest"),
    "MLFLOW_PORT": Variable("mlflowPort", "5000"),
    "PREFECT_PORT": Variable("prefectPort", "4200"),
    "API_PORT": Variable("apiPort", "8000"),
    "API_REPLICAS": Variable("apiReplicas", "2"),
    "WORKER_REPLICAS": Variable("workerReplicas", "1"),
    "TRAINING_TRIALS": Variable("trainingTrials", "20"),
    "TRAINING_PARALLEL_WORKERS": Variable("trainingParallelWorkers", "1"),
    "PROMOTION_POLICY": Variable("promotionPolicy", "offline"),
}


@dataclass(frozen=True)
class Port:
    """A published port, always bound to 127.0.0.1."""

    container: int
    host: str  # template, e.g. "${API_PORT:-8000}"


@dataclass(frozen=True)
class Healthcheck:
    """A Docker healthcheck (``CMD`` form)."""

    test: tuple[str, ...]
    interval_s: int = 5
    timeout_s: int = 5
    retries: int = 30
    start_period_s: int = 10


@dataclass(frozen=True)
class Service:
    """One container of the stack."""

    name: str
    image: str  # a key of BUILT_IMAGES or a public image name
    command: tuple[str, ...] | None
    environment: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    healthcheck: Healthcheck | None = None
    depends_on: Mapping[str, Condition] = field(default_factory=dict)
    volumes: Mapping[str, str] = field(default_factory=dict)  # named volume -> mount path
    memory_mb: int = 1024  # also the memory+swap limit: no swap, and nothing for Docker to compute
    one_shot: bool = False  # runs to completion once (restart "no"), everything else restarts
    stop_grace_s: int = 30  # SIGTERM, then this long before SIGKILL (compose down, Pulumi replace/destroy)
    replicas: str | None = None  # template of the container count (compose `scale`); None: exactly one


def _pg(database: str, driver: str = "postgresql") -> str:
    credentials = "${POSTGRES_USER:-reggaeton}:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    return f"{driver}://{credentials}@postgres:5432/{database}"


def _http_check(url: str) -> Healthcheck:
    return Healthcheck(("python", "-m", "infra.healthcheck", url))


PREFECT_API = "http://prefect-server:4200/api"
# The prediction log's archive (Parquet): a volume every container that runs flows mounts, so any worker
# can archive, and any worker's monitor or retrain can read, the same files.
ARCHIVE_VOLUME = "prediction-archive"
ARCHIVE_DIR = "/state/archive"

# Environment shared by every container that runs project code.
APP_ENVIRONMENT: dict[str, str] = {
    "REGGAETON_MODE": "production",
    "REGGAETON_STATE_DIR": "/state",
    "REGGAETON_MLFLOW__TRACKING_URI": "http://mlflow:5000",
    "REGGAETON_TRAINING__OPTUNA_STORAGE": _pg("optuna"),
    "REGGAETON_TRAINING__N_TRIALS": "${TRAINING_TRIALS:-20}",
    "REGGAETON_TRAINING__N_JOBS": "1",
    # Tuning runs per retrain on the tuning pool (at most one per worker container); 1: in the retrain.
    "REGGAETON_TRAINING__PARALLEL_WORKERS": "${TRAINING_PARALLEL_WORKERS:-1}",
    # offline | shadow | canary (README, "Live evidence"): the retrain and the live gate read it.
    "REGGAETON_LIVE__POLICY": "${PROMOTION_POLICY:-offline}",
    "REGGAETON_SERVING__PREDICTION_LOG_URL": _pg("predictions"),
    "REGGAETON_SERVING__ADMIN_TOKEN": "${ADMIN_TOKEN:?set ADMIN_TOKEN}",
    "REGGAETON_MONITORING__RESULTS_URL": _pg("predictions"),
    # The retention flow archives old prediction-log rows here; the monitor and training read them back.
    "REGGAETON_RETENTION__ARCHIVE_DIR": ARCHIVE_DIR,
    "REGGAETON_PREFECT__API_URL": PREFECT_API,
    "REGGAETON_PREFECT__WORK_POOL": WORK_POOL,
    "REGGAETON_PREFECT__TUNING_POOL": TUNING_POOL,
    "PREFECT_API_URL": PREFECT_API,
    # Flow runs prove they are alive this often; the loop's automation crashes runs silent for 3 beats.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(names.FLOW_HEARTBEAT_S),
    # Workers ask for runs this often: a triggered retrain starts within it (Prefect's default: 10 s).
    "PREFECT_WORKER_QUERY_SECONDS": str(names.WORKER_POLL_S),
}

SECRET_CHECK = "check-secrets"
# After SIGTERM the Prefect worker stops its flow runs and exits (seconds); what is left of it after this
# is killed, then the runs it was submitting are handed back, within HAND_BACK_S more, before Docker's
# SIGKILL.
WORKER_GRACE_S = 20
HAND_BACK_S = 10

SERVICES: tuple[Service, ...] = (
    Service(
        # Runs first: refuses a secret still set to its example value (.env.example), naming the variable;
        # everything else starts after it (postgres directly, the rest through postgres).
        name=SECRET_CHECK,
        image=APP_IMAGE,
        command=("python", "-m", "infra.check_secrets"),
        environment={
            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}",
            "ADMIN_TOKEN": "${ADMIN_TOKEN:?set ADMIN_TOKEN}",
        },
        memory_mb=256,
        one_shot=True,
    ),
    Service(
        name="postgres",
        image=POSTGRES_IMAGE,
        command=None,
        environment={
            "POSTGRES_USER": "${POSTGRES_USER:-reggaeton}",
            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}",
        },
        healthcheck=Healthcheck(("pg_isready", "-U", "${POSTGRES_USER:-reggaeton}", "-d", "postgres")),
        depends_on={SECRET_CHECK: "service_completed_successfully"},
        volumes={"pgdata": "/var/lib/postgresql/data"},
        memory_mb=512,
        stop_grace_s=60,  # a clean shutdown checkpoints; a killed Postgres replays its WAL on the next start
    ),
    Service(
        name="mlflow",
        image=APP_IMAGE,
        command=(
            "mlflow",
            "server",
            "--backend-store-uri",
            _pg("mlflow"),
            "--serve-artifacts",
            "--artifacts-destination",
            "/mlartifacts",
            "--host",
            "0.0.0.0",
            "--port",
            "5000",
            "--workers",
            "1",
            "--allowed-hosts",
            "mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*",
        ),
        environment={
            # The job runner (GenAI features this stack does not use) forks ~7 processes of ~180 MB each.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
        ports=(Port(5000, "${MLFLOW_PORT:-5000}"),),
        healthcheck=_http_check("http://127.0.0.1:5000/health"),
        depends_on={"postgres": "service_healthy"},
        volumes={"mlartifacts": "/mlartifacts"},
        memory_mb=1536,
    ),
    Service(
        name="prefect-server",
        image=APP_IMAGE,
        command=("prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"),
        environment={
            "PREFECT_API_DATABASE_CONNECTION_URL": _pg("prefect", "postgresql+asyncpg"),
            "PREFECT_UI_API_URL": "http://127.0.0.1:${PREFECT_PORT:-4200}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The UI is copied out of site-packages at start; the image runs as a non-root user.
            "PREFECT_UI_STATIC_DIRECTORY": "/home/app/.prefect/ui",
        },
        ports=(Port(4200, "${PREFECT_PORT:-4200}"),),
        healthcheck=_http_check("http://127.0.0.1:4200/api/health"),
        depends_on={"postgres": "service_healthy"},
    ),
    Service(
        name="worker",
        image=APP_IMAGE,
        # `prefect worker start --with-healthcheck` as the child of infra.worker (exec form: it gets the
        # SIGTERM), which hands the runs left Pending back to the schedule once the worker has stopped;
        # beside it a worker on the tuning pool taking one run at a time (one tuning run per container).
        # N replicas (WORKER_REPLICAS / workerReplicas, or `--scale worker=N`).
        command=(
            *("python", "-m", "infra.worker", "--pool", WORK_POOL),
            *("--tuning-pool", TUNING_POOL, "--grace-s", str(WORKER_GRACE_S)),
        ),
        environment=APP_ENVIRONMENT,
        healthcheck=_http_check("http://127.0.0.1:8080/health"),
        depends_on={"prefect-server": "service_healthy", "mlflow": "service_healthy"},
        volumes={ARCHIVE_VOLUME: ARCHIVE_DIR},
        memory_mb=2048,
        stop_grace_s=WORKER_GRACE_S + HAND_BACK_S,
        replicas="${WORKER_REPLICAS:-1}",
    ),
    Service(
        name="watchdog",
        image=APP_IMAGE,
        # The same process as the embedded stack's: stranded runs, dead-man's switch, cancelled runs.
        command=("python", "-m", "monitoring.watchdog"),
        environment={**APP_ENVIRONMENT, "REGGAETON_STATE_DIR": "/state/watchdog"},
        # Healthy while its looks at the Prefect API succeed (it writes its memory after each one).
        healthcheck=Healthcheck(("python", "-m", "monitoring.watchdog", "--healthy")),
        depends_on={"prefect-server": "service_healthy"},
        # What it has announced (watchdog.json) survives a new container: nothing is announced twice.
        volumes={"watchdog-state": "/state/watchdog"},
        memory_mb=512,
    ),
    Service(
        name="bootstrap",
        image=APP_IMAGE,
        # `python -m flows.deploy`, then train-and-promote on the worker while there is no champion.
        command=("python", "-m", "infra.bootstrap"),
        environment=APP_ENVIRONMENT,
        depends_on={"prefect-server": "service_healthy", "mlflow": "service_healthy"},
        volumes={ARCHIVE_VOLUME: ARCHIVE_DIR},
        memory_mb=2048,
        one_shot=True,
    ),
    Service(
        # N replicas (API_REPLICAS / apiReplicas, or `--scale api=N`), reached only through the balancer.
        # Each polls the registry and hot-swaps on its own, and logs to the one Postgres prediction log.
        name="api",
        image=SERVING_IMAGE,
        command=("python", "-m", "serving"),
        environment={
            **APP_ENVIRONMENT,
            "REGGAETON_SERVING__HOST": "0.0.0.0",
            "REGGAETON_SERVING__PORT": "8000",
            "REGGAETON_SERVING__MODEL_CACHE_DIR": "/state/model-cache",
            # The prediction log's journal: answered rows wait here while Postgres is unavailable. The
            # volume is shared; each replica claims its own subfolder (a journal has one writer).
            "REGGAETON_SERVING__SPOOL_DIR": "/state/prediction-spool",
            "REGGAETON_SERVING__SPOOL_SLOTS": str(MAX_API_REPLICAS),
        },
        healthcheck=_http_check("http://127.0.0.1:8000/health"),
        depends_on={"bootstrap": "service_completed_successfully", "mlflow": "service_healthy"},
        volumes={"model-cache": "/state/model-cache", "api-spool": "/state/prediction-spool"},
        replicas="${API_REPLICAS:-2}",
    ),
    Service(
        # HAProxy on the published API port: round robin over the replicas whose /ready answers 200
        # (checked every second), retrying on another replica a request no replica accepted.
        name="balancer",
        image=BALANCER_IMAGE,
        command=None,
        ports=(Port(8000, "${API_PORT:-8000}"),),
        # 200 while at least one replica is in rotation (infra/balancer/haproxy.cfg).
        healthcheck=_http_check("http://127.0.0.1:8404/health"),
        depends_on={"api": "service_healthy"},
        memory_mb=256,
    ),
)

VOLUMES: tuple[str, ...] = tuple(dict.fromkeys(v for s in SERVICES for v in s.volumes))


def init_sql(databases: tuple[str, ...] = DATABASES) -> str:
    """The Postgres init script: one database per component (run once, on a fresh data volume)."""
    return "".join(f"CREATE DATABASE {name};\n" for name in databases)


_REFERENCE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def references(template: str) -> list[str]:
    """Names of the variables a template uses."""
    return [match["name"] for match in _REFERENCE.finditer(template)]


def inline_defaults(template: str) -> dict[str, str]:
    """The ``${NAME:-default}`` defaults a template states."""
    return {m["name"]: m["arg"] for m in _REFERENCE.finditer(template) if m["op"] == ":-"}


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a compose-style template from ``values``.

    Raises:
        KeyError: a required variable (no default) is missing.
    """

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if values.get(name):
            return values[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} is required" + (f": {arg}" if arg else ""))

    return _REFERENCE.sub(substitute, template)


def service(name: str) -> Service:
    """The service called ``name``."""
    for candidate in SERVICES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
