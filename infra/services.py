"""The container stack as one table: the single source of truth for docker-compose.yml and the Pulumi program.

Values are templates in docker-compose's interpolation syntax (``${NAME}``, ``${NAME:-default}``,
``${NAME:?message}``): docker-compose fills them from ``.env``, the Pulumi program from its config
(`VARIABLES` maps each name to a config key). ``tests/infra`` checks that the compose file and the Pulumi
stack both declare exactly this table.

Who holds what (the access matrix of docs/operations.md): MLflow runs its basic-auth app with one account
per service (``infra/accounts.py`` grants each the least MLflow can express), the Prefect server requires
its auth string, Postgres has a role per service and database (``infra/postgres/roles.sql``) and only the
database and its roles job hold the superuser password; the decision signing key is the worker's and
the bootstrap's, the API gets the public key. No password is on a command line.
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
# The Postgres role of each service and the databases it owns (infra/postgres/roles.sql creates them):
# MLflow, Prefect and Optuna own theirs; `predictions` owns the prediction log (it runs its migrations),
# the API may only insert and read back log rows, the worker reads them and owns monitoring's results.
DB_ROLES: dict[str, tuple[str, ...]] = {
    "mlflow": ("mlflow", "mlflow_auth"),
    "prefect": ("prefect",),
    "optuna": ("optuna",),
    "predictions": ("predictions",),
    "worker": ("monitoring",),
    "api": (),
}
DATABASES = tuple(database for owned in DB_ROLES.values() for database in owned)
# Scripts and configuration mounted into containers (compose: read-only bind mounts; Pulumi: uploads).
POSTGRES_FILES = {
    "/reggaeton/start.sh": "infra/postgres/start.sh",
    "/reggaeton/roles.sql": "infra/postgres/roles.sql",
}
MLFLOW_AUTH_CONFIG = "/app/infra/mlflow/basic_auth.ini"  # in the platform image (infra/ is copied)
# Where alerts go without a WEBHOOK_URL: the stack's own receiver container (docker-compose logs receiver).
RECEIVER_URL = "http://receiver:8765/alerts"
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
# A secret with a default is optional (an empty API key: no key; no webhook: the receiver container).
VARIABLES: dict[str, Variable] = {
    "POSTGRES_USER": Variable("dbUser", "reggaeton"),
    "POSTGRES_PASSWORD": Variable("dbPassword", secret=True),
    "ADMIN_TOKEN": Variable("adminToken", secret=True),
    "FEEDBACK_TOKEN": Variable("feedbackToken", secret=True),
    "API_KEY": Variable("apiKey", "", secret=True),
    "WEBHOOK_URL": Variable("webhookUrl", RECEIVER_URL, secret=True),
    "PREFECT_AUTH_STRING": Variable("prefectAuthString", secret=True),
    "MLFLOW_ADMIN_PASSWORD": Variable("mlflowAdminPassword", secret=True),
    "MLFLOW_FLASK_SECRET": Variable("mlflowFlaskSecret", secret=True),
    **{
        f"MLFLOW_{account.upper()}_PASSWORD": Variable(f"mlflow{account.title()}Password", secret=True)
        for account in names.MLFLOW_ACCOUNTS
    },
    **{f"{role.upper()}_DB_PASSWORD": Variable(f"{role}DbPassword", secret=True) for role in DB_ROLES},
    "DECISION_SIGNING_KEY": Variable("decisionSigningKey", secret=True),
    "DECISION_VERIFY_KEY": Variable("decisionVerifyKey"),
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
    files: Mapping[str, str] = field(default_factory=dict)  # mount path -> file of this repository
    entrypoint: tuple[str, ...] | None = None  # None: the image's own
    memory_mb: int = 1024  # also the memory+swap limit: no swap, and nothing for Docker to compute
    one_shot: bool = False  # runs to completion once (restart "no"), everything else restarts
    stop_grace_s: int = 30  # SIGTERM, then this long before SIGKILL (compose down, Pulumi replace/destroy)
    replicas: str | None = None  # template of the container count (compose `scale`); None: exactly one


def _pg(role: str, database: str, driver: str = "postgresql") -> str:
    """A Postgres URL of a service role (its password from its own variable; never the superuser's)."""
    password = f"${{{role.upper()}_DB_PASSWORD:?set {role.upper()}_DB_PASSWORD}}"
    return f"{driver}://{role}:{password}@postgres:5432/{database}"


def _secret(name: str) -> str:
    """A required variable's template (the stack refuses to start without it)."""
    return f"${{{name}:?set {name}}}"


def _http_check(url: str, start_period_s: int = 10) -> Healthcheck:
    return Healthcheck(("python", "-m", "infra.healthcheck", url), start_period_s=start_period_s)


PREFECT_API = "http://prefect-server:4200/api"
WATCHDOG_STATE_DIR = "/state/watchdog"
WATCHDOG_ALIVE_PATH = f"{WATCHDOG_STATE_DIR}/{names.WATCHDOG_ALIVE_FILE}"
# The prediction log's archive (Parquet): a volume every container that runs flows mounts, so any worker
# can archive, and any worker's monitor or retrain can read, the same files.
ARCHIVE_VOLUME = "prediction-archive"
ARCHIVE_DIR = "/state/archive"

# What every container running project code gets: where the services are, and Prefect's auth string.
BASE_ENVIRONMENT: dict[str, str] = {
    "REGGAETON_MODE": "production",
    "REGGAETON_STATE_DIR": "/state",
    "REGGAETON_MLFLOW__TRACKING_URI": "http://mlflow:5000",
    "REGGAETON_PREFECT__API_URL": PREFECT_API,
    "REGGAETON_PREFECT__WORK_POOL": WORK_POOL,
    "REGGAETON_PREFECT__TUNING_POOL": TUNING_POOL,
    "PREFECT_API_URL": PREFECT_API,
    "PREFECT_API_AUTH_STRING": _secret("PREFECT_AUTH_STRING"),
}

# The worker's flow runs (training, tuning, promotion, monitoring): their MLflow accounts, Optuna's role,
# the worker role (reads the prediction log, owns monitoring's results), the decision signing key.
FLOW_ENVIRONMENT: dict[str, str] = {
    **BASE_ENVIRONMENT,
    "REGGAETON_TRAINING__OPTUNA_STORAGE": _pg("optuna", "optuna"),
    "REGGAETON_TRAINING__N_TRIALS": "${TRAINING_TRIALS:-20}",
    "REGGAETON_TRAINING__N_JOBS": "1",
    # Tuning runs per retrain on the tuning pool (at most one per worker container); 1: in the retrain.
    "REGGAETON_TRAINING__PARALLEL_WORKERS": "${TRAINING_PARALLEL_WORKERS:-1}",
    # offline | shadow | canary (README, "Live evidence"): the retrain and the live gate read it.
    "REGGAETON_LIVE__POLICY": "${PROMOTION_POLICY:-offline}",
    "REGGAETON_SERVING__PREDICTION_LOG_URL": _pg("worker", "predictions"),
    "REGGAETON_MONITORING__RESULTS_URL": _pg("worker", "monitoring"),
    # The retention flow archives old prediction-log rows here; the monitor and training read them back.
    "REGGAETON_RETENTION__ARCHIVE_DIR": ARCHIVE_DIR,
    **{
        f"REGGAETON_MLFLOW__{account.upper()}_PASSWORD": _secret(f"MLFLOW_{account.upper()}_PASSWORD")
        for account in (names.TRAINING_ACCOUNT, names.PROMOTION_ACCOUNT, names.MONITORING_ACCOUNT)
    },
    "REGGAETON_SIGNING__PRIVATE_KEY": _secret("DECISION_SIGNING_KEY"),
    "REGGAETON_SIGNING__PUBLIC_KEYS": _secret("DECISION_VERIFY_KEY"),
    # Notifications (the automations `reggaeton deploy` applies): the configured webhook, else the receiver.
    "REGGAETON_PREFECT__WEBHOOK_URL": f"${{WEBHOOK_URL:-{RECEIVER_URL}}}",
    # Flow runs prove they are alive this often; the loop's automation crashes runs silent for 3 beats.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(names.FLOW_HEARTBEAT_S),
    # Workers ask for runs this often: a triggered retrain starts within it (Prefect's default: 10 s).
    "PREFECT_WORKER_QUERY_SECONDS": str(names.WORKER_POLL_S),
}

SECRET_CHECK = "check-secrets"
POSTGRES_ROLES = "postgres-roles"
# The containers that hold the Postgres superuser password: the database and its roles job (both on the
# Postgres image); no application container does (tests/infra checks it with docker inspect).
SUPERUSER_HOLDERS = frozenset({"postgres", POSTGRES_ROLES})
# After SIGTERM the Prefect worker stops its flow runs and exits (seconds); what is left of it after this
# is killed, then the runs it was submitting are handed back, within HAND_BACK_S more, before Docker's
# SIGKILL.
WORKER_GRACE_S = 20
HAND_BACK_S = 10

SERVICES: tuple[Service, ...] = (
    Service(
        # Runs first: refuses a secret still set to its example value (.env.example), naming the variable,
        # and a verify key that is not the signing key's other half; everything else starts after it
        # (postgres directly, the rest through postgres). The Postgres superuser password is checked by
        # the database itself (infra/postgres/start.sh): no application container holds it.
        name=SECRET_CHECK,
        image=APP_IMAGE,
        command=("python", "-m", "infra.check_secrets"),
        environment={
            name: (f"${{{name}:-{variable.default}}}" if variable.default is not None else _secret(name))
            for name, variable in VARIABLES.items()
            if (variable.secret or name == "DECISION_VERIFY_KEY") and name != "POSTGRES_PASSWORD"
        },
        memory_mb=256,
        one_shot=True,
    ),
    Service(
        name="postgres",
        image=POSTGRES_IMAGE,
        # Refuses an example superuser password, then the image's own entrypoint.
        entrypoint=("sh", "/reggaeton/start.sh"),
        command=("postgres",),
        environment={
            "POSTGRES_USER": "${POSTGRES_USER:-reggaeton}",
            "POSTGRES_PASSWORD": _secret("POSTGRES_PASSWORD"),
        },
        healthcheck=Healthcheck(("pg_isready", "-U", "${POSTGRES_USER:-reggaeton}", "-d", "postgres")),
        depends_on={SECRET_CHECK: "service_completed_successfully"},
        volumes={"pgdata": "/var/lib/postgresql/data"},
        files=POSTGRES_FILES,
        memory_mb=512,
        stop_grace_s=60,  # a clean shutdown checkpoints; a killed Postgres replays its WAL on the next start
    ),
    Service(
        # On every `up`: one role per service with the password of .env (rotation: change it, `up`),
        # the databases each owns, CONNECT only where a role needs it, the prediction log's grants.
        # Idempotent; it also hands the tables of a stack from before roles to their owners.
        name=POSTGRES_ROLES,
        image=POSTGRES_IMAGE,
        entrypoint=("psql",),
        command=("-v", "ON_ERROR_STOP=1", "-f", "/reggaeton/roles.sql"),
        environment={
            # libpq's own variables: the superuser's password never on a command line.
            "PGHOST": "postgres",
            "PGDATABASE": "postgres",
            "PGUSER": "${POSTGRES_USER:-reggaeton}",
            "PGPASSWORD": _secret("POSTGRES_PASSWORD"),
            **{f"{role.upper()}_DB_PASSWORD": _secret(f"{role.upper()}_DB_PASSWORD") for role in DB_ROLES},
        },
        depends_on={"postgres": "service_healthy"},
        files=POSTGRES_FILES,
        memory_mb=128,
        one_shot=True,
    ),
    Service(
        name="mlflow",
        image=APP_IMAGE,
        # The basic-auth app: every API call needs an account (/health stays open for the probes). Its
        # stores are Postgres databases of the mlflow role, found through the environment (the backend
        # store's URL, libpq's password): nothing secret on the command line (`ps`, `docker inspect`).
        command=(
            "mlflow",
            "server",
            "--app-name",
            "basic-auth",
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
            "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@postgres:5432/mlflow",
            "PGPASSWORD": _secret("MLFLOW_DB_PASSWORD"),
            # basic_auth.ini: no default permission, the auth store in the mlflow_auth database.
            "MLFLOW_AUTH_CONFIG_PATH": MLFLOW_AUTH_CONFIG,
            "MLFLOW_AUTH_ADMIN_USERNAME": names.MLFLOW_ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": _secret("MLFLOW_ADMIN_PASSWORD"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret("MLFLOW_FLASK_SECRET"),
            **names.MLFLOW_SERVER_ENV,
        },
        ports=(Port(5000, "${MLFLOW_PORT:-5000}"),),
        # Its first start creates two databases' tables (tracking, then the auth app's): ~1 min on a quiet
        # machine, over 3 on a busy one. Probes failing meanwhile do not count against it.
        healthcheck=_http_check("http://127.0.0.1:5000/health", start_period_s=300),
        depends_on={POSTGRES_ROLES: "service_completed_successfully"},
        volumes={"mlartifacts": "/mlartifacts"},
        memory_mb=1536,
    ),
    Service(
        name="prefect-server",
        image=APP_IMAGE,
        command=("prefect", "server", "start", "--host", "0.0.0.0", "--port", "4200"),
        environment={
            "PREFECT_API_DATABASE_CONNECTION_URL": _pg("prefect", "prefect", "postgresql+asyncpg"),
            # Every API call but /api/health and /api/ready needs the auth string (the UI asks for it).
            "PREFECT_SERVER_API_AUTH_STRING": _secret("PREFECT_AUTH_STRING"),
            "PREFECT_UI_API_URL": "http://127.0.0.1:${PREFECT_PORT:-4200}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The UI is copied out of site-packages at start; the image runs as a non-root user.
            "PREFECT_UI_STATIC_DIRECTORY": "/home/app/.prefect/ui",
        },
        ports=(Port(4200, "${PREFECT_PORT:-4200}"),),
        # Its first start migrates its database, like MLflow's: on a machine busy with other containers it
        # answered after compose had already called it unhealthy (and failed `up`) in one CI run.
        healthcheck=_http_check("http://127.0.0.1:4200/api/health", start_period_s=300),
        depends_on={POSTGRES_ROLES: "service_completed_successfully"},
    ),
    Service(
        # Where notifications go when WEBHOOK_URL is not set (the bootstrap says so): each alert is a line
        # of `docker-compose logs receiver`. Not published; set WEBHOOK_URL for Slack or any webhook.
        name="receiver",
        image=APP_IMAGE,
        command=("python", "-m", "embedded.receiver", "--host", "0.0.0.0", "--port", "8765"),
        environment={"REGGAETON_STATE_DIR": "/state"},
        healthcheck=_http_check("http://127.0.0.1:8765/health"),
        memory_mb=128,
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
        environment=FLOW_ENVIRONMENT,
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
        # It talks to Prefect only: no MLflow account, no database.
        command=("python", "-m", "monitoring.watchdog"),
        environment={
            **BASE_ENVIRONMENT,
            "REGGAETON_STATE_DIR": WATCHDOG_STATE_DIR,
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(names.FLOW_HEARTBEAT_S),
            "PREFECT_WORKER_QUERY_SECONDS": str(names.WORKER_POLL_S),
        },
        # Healthy while its looks at the Prefect API succeed: it renews its liveness file after each one,
        # and the check reads that file without importing the watchdog (which imports Prefect: 2.0 s of
        # CPU per check, 40 % of a core at one check every 5 s).
        healthcheck=Healthcheck(("python", "-m", "infra.healthcheck", "--alive", WATCHDOG_ALIVE_PATH)),
        depends_on={"prefect-server": "service_healthy"},
        # What it has announced (watchdog.json) survives a new container: nothing is announced twice.
        volumes={"watchdog-state": WATCHDOG_STATE_DIR},
        memory_mb=512,
    ),
    Service(
        name="bootstrap",
        image=APP_IMAGE,
        # The prediction log's migrations (as its owner), the MLflow accounts and their grants (as MLflow's
        # admin), the one-time signing of a champion from before signed decisions, `python -m
        # flows.deploy`, then train-and-promote on the worker while there is no champion.
        command=("python", "-m", "infra.bootstrap"),
        environment={
            **FLOW_ENVIRONMENT,
            "REGGAETON_SERVING__PREDICTION_LOG_URL": _pg("predictions", "predictions"),
            "MLFLOW_TRACKING_USERNAME": names.MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": _secret("MLFLOW_ADMIN_PASSWORD"),
            "REGGAETON_MLFLOW__SERVING_PASSWORD": _secret("MLFLOW_SERVING_PASSWORD"),
        },
        depends_on={"prefect-server": "service_healthy", "mlflow": "service_healthy"},
        volumes={ARCHIVE_VOLUME: ARCHIVE_DIR},
        memory_mb=2048,
        one_shot=True,
    ),
    Service(
        # N replicas (API_REPLICAS / apiReplicas, or `--scale api=N`), reached only through the balancer.
        # Each polls the registry and hot-swaps on its own (a champion only with a signed decision it
        # verifies with the public key), and logs to the one Postgres prediction log as the api role.
        name="api",
        image=SERVING_IMAGE,
        command=("python", "-m", "serving"),
        environment={
            **BASE_ENVIRONMENT,
            "REGGAETON_SERVING__PREDICTION_LOG_URL": _pg("api", "predictions"),
            "REGGAETON_SERVING__ADMIN_TOKEN": _secret("ADMIN_TOKEN"),
            "REGGAETON_SERVING__FEEDBACK_TOKEN": _secret("FEEDBACK_TOKEN"),
            # Empty: POST /predict needs no key.
            "REGGAETON_SERVING__API_KEY": "${API_KEY:-}",
            "REGGAETON_MLFLOW__SERVING_PASSWORD": _secret("MLFLOW_SERVING_PASSWORD"),
            "REGGAETON_SIGNING__PUBLIC_KEYS": _secret("DECISION_VERIFY_KEY"),
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
