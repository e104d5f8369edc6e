"""Which stack a command talks to: the endpoints of the stack that is up, found without flags.

Each endpoint is taken from the first of these that has it:

1. the project's own setting (``REGGAETON_MLFLOW__TRACKING_URI``, ``REGGAETON_PREFECT__API_URL``,
   ``REGGAETON_SERVING__HOST``/``PORT``);
2. the standard variable of the tool (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``);
3. the compose stack's ``.env`` ports on 127.0.0.1, when ``--stack compose`` (or ``REGGAETON_STACK=compose``)
   is chosen (its credentials too: the operator is MLflow's admin, sends Prefect's auth string, signs
   decisions with the stack's key, uses the API's tokens; a variable already set in the environment wins);
4. what ``reggaeton up`` recorded in ``<state>/stack.json`` (the local stack that is up);
5. the local stack's defaults (the settings' hosts and ports).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
from pydantic import SecretStr

from reggaeton.settings import Settings

LOCAL: Final = "local"
COMPOSE: Final = "compose"
STACKS: Final = (LOCAL, COMPOSE)
STACK_ENV: Final = "REGGAETON_STACK"

# The compose stack's host ports (.env entries) and their defaults (.env.example).
COMPOSE_PORTS: Final = {"MLFLOW_PORT": 5000, "PREFECT_PORT": 4200, "API_PORT": 8000}
# The compose stack's credentials the operator's command line uses: .env entry -> the variable it is
# exported as (MLflow's and Prefect's own), or the setting it fills.
COMPOSE_PROCESS_CREDENTIALS: Final = {
    "MLFLOW_ADMIN_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_AUTH_STRING": "PREFECT_API_AUTH_STRING",
}
COMPOSE_SETTINGS_CREDENTIALS: Final = {
    "DECISION_SIGNING_KEY": ("signing", "private_key"),
    "DECISION_VERIFY_KEY": ("signing", "public_keys"),
    "ADMIN_TOKEN": ("serving", "admin_token"),
    "FEEDBACK_TOKEN": ("serving", "feedback_token"),
    "API_KEY": ("serving", "api_key"),
}
MLFLOW_ADMIN_USER: Final = "admin"


class Unreachable(RuntimeError):
    """A service of the stack does not answer; the message names the URL and how to start it."""


@dataclass(frozen=True)
class Endpoints:
    """The URLs of the stack a command talks to, and where each came from."""

    stack: str
    mlflow: str
    prefect_api: str
    api: str
    receiver: str | None
    sources: Mapping[str, str]
    # The compose stack's .env entries the command line may use (credentials); empty for the local stack.
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def prefect_ui(self) -> str:
        """The Prefect UI (the API URL without its ``/api`` suffix)."""
        return self.prefect_api.removesuffix("/").removesuffix("/api")

    def start_hint(self) -> str:
        """How to start this stack."""
        if self.stack == COMPOSE:
            return "start the compose stack with `docker-compose up -d`"
        return "start the local stack with `reggaeton up`"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a docker-compose ``.env`` file (comments and blank lines skipped)."""
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key.strip()] = value.strip().strip("\"'")
    return values


def _first(*candidates: tuple[str | None, str]) -> tuple[str, str]:
    for value, source in candidates:
        if value:
            return value, source
    raise ValueError("no candidate")  # the last candidate is always set


def resolve(
    settings: Settings,
    chosen: str | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: Path = Path(".env"),
) -> Endpoints:
    """The endpoints of the stack to talk to (see the module docstring for the order).

    Args:
        settings: The settings from the environment.
        chosen: ``local`` or ``compose``; default ``REGGAETON_STACK`` or ``local``.
        environ: The environment (default: this process's).
        env_file: The compose stack's ``.env`` file.
    """
    from embedded import stack  # imported when needed: `reggaeton --help` stays quick

    environ = os.environ if environ is None else environ
    which = chosen or environ.get(STACK_ENV) or LOCAL
    if which not in STACKS:
        raise ValueError(f"{STACK_ENV}={which!r}: choose one of {', '.join(STACKS)}")
    recorded: Mapping[str, str] = {}
    compose: dict[str, str] = {}
    credentials: dict[str, str] = {}
    if which == COMPOSE:
        ports = dict(COMPOSE_PORTS)
        env_values = read_env_file(env_file)
        wanted = {*COMPOSE_PROCESS_CREDENTIALS, *COMPOSE_SETTINGS_CREDENTIALS, "WEBHOOK_URL"}
        credentials = {key: value for key, value in env_values.items() if key in wanted and value}
        for key, value in env_values.items():
            if key in ports and value.isdigit():
                ports[key] = int(value)
        compose = {
            "mlflow": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
            "prefect_api": f"http://127.0.0.1:{ports['PREFECT_PORT']}/api",
            "api": f"http://127.0.0.1:{ports['API_PORT']}",
        }
    else:
        recorded = stack.read_endpoints(settings) or {}
    where = f"{env_file} (compose)" if which == COMPOSE else str(stack.endpoints_path(settings))
    explicit_api = "REGGAETON_SERVING__PORT" in environ or "REGGAETON_SERVING__HOST" in environ
    mlflow = _first(
        (environ.get("REGGAETON_MLFLOW__TRACKING_URI"), "REGGAETON_MLFLOW__TRACKING_URI"),
        (environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"),
        (compose.get("mlflow") or recorded.get("mlflow"), where),
        (stack.mlflow_url(settings), "default"),
    )
    prefect = _first(
        (environ.get("REGGAETON_PREFECT__API_URL"), "REGGAETON_PREFECT__API_URL"),
        (environ.get("PREFECT_API_URL"), "PREFECT_API_URL"),
        (compose.get("prefect_api") or recorded.get("prefect_api"), where),
        (settings.prefect_api_url, "default"),
    )
    api = _first(
        (stack.api_url(settings) if explicit_api else None, "REGGAETON_SERVING__HOST/PORT"),
        (compose.get("api") or recorded.get("api"), where),
        (stack.api_url(settings), "default"),
    )
    receiver = None if which == COMPOSE else recorded.get("receiver") or stack.receiver_url(settings)
    return Endpoints(
        stack=which,
        mlflow=mlflow[0],
        prefect_api=prefect[0],
        api=api[0],
        receiver=receiver,
        sources={"mlflow": mlflow[1], "prefect_api": prefect[1], "api": api[1]},
        credentials=credentials,
    )


def _recorded(endpoints: Endpoints, name: str) -> bool:
    return endpoints.sources.get(name, "").endswith("stack.json")


def apply(settings: Settings, endpoints: Endpoints) -> Settings:
    """The settings pointed at these endpoints (MLflow tracking and registry, Prefect API, the API)."""
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": endpoints.mlflow})
    prefect_url = httpx.URL(endpoints.prefect_api)
    prefect_update: dict[str, object] = {"api_url": endpoints.prefect_api}
    if endpoints.stack == LOCAL:
        # The local stack's own ports are those of the stack that is up: `up` then reuses it (its
        # health checks ask there), and `deploy` points notifications at its receiver.
        if _recorded(endpoints, "prefect_api"):
            prefect_update.update(host=prefect_url.host, port=prefect_url.port or settings.prefect.port)
        if endpoints.receiver is not None and settings.prefect.webhook_url is None:
            prefect_update["alert_receiver_port"] = httpx.URL(endpoints.receiver).port
        if _recorded(endpoints, "mlflow"):
            mlflow_url = httpx.URL(endpoints.mlflow)
            mlflow = mlflow.model_copy(
                update={"host": mlflow_url.host, "port": mlflow_url.port or settings.mlflow.port}
            )
    prefect = settings.prefect.model_copy(update=prefect_update)
    api = httpx.URL(endpoints.api)
    serving_update: dict[str, object] = {
        "host": api.host or settings.serving.host,
        "port": api.port or settings.serving.port,
    }
    signing_update: dict[str, object] = {}
    for key, (section, name) in COMPOSE_SETTINGS_CREDENTIALS.items():
        value = endpoints.credentials.get(key)
        if value is None or name in getattr(settings, section).model_fields_set:
            continue  # not in .env, or the environment's own setting wins
        secret = value if name == "public_keys" else SecretStr(value)
        (serving_update if section == "serving" else signing_update)[name] = secret
    serving = settings.serving.model_copy(update=serving_update)
    signing = settings.signing.model_copy(update=signing_update)
    return settings.model_copy(
        update={"mlflow": mlflow, "prefect": prefect, "serving": serving, "signing": signing}
    )


def export_credentials(endpoints: Endpoints, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Put the compose stack's MLflow and Prefect credentials where their clients read them.

    The operator acts as MLflow's admin and sends Prefect's auth string. A variable already set wins.

    Returns:
        The variables set.
    """
    environ = os.environ if environ is None else environ
    exported = []
    for key, variable in COMPOSE_PROCESS_CREDENTIALS.items():
        value = endpoints.credentials.get(key)
        if value and variable not in environ:
            environ[variable] = value
            exported.append(variable)
    if "MLFLOW_TRACKING_PASSWORD" in exported and "MLFLOW_TRACKING_USERNAME" not in environ:
        environ["MLFLOW_TRACKING_USERNAME"] = MLFLOW_ADMIN_USER
        exported.append("MLFLOW_TRACKING_USERNAME")
    return exported


def answers(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a health URL answers without a server error."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code < 500
    except httpx.HTTPError:
        return False


def health_urls(endpoints: Endpoints) -> dict[str, str]:
    """Each service's health URL (MLflow only when it is a server)."""
    urls = {
        "prefect": f"{endpoints.prefect_api}/health",
        "api": f"{endpoints.api}/health",
    }
    if endpoints.mlflow.startswith(("http://", "https://")):
        urls["mlflow"] = f"{endpoints.mlflow}/health"
    if endpoints.receiver is not None:
        urls["receiver"] = f"{endpoints.receiver}/health"
    return urls


SERVICE_URLS: Final = {"mlflow": "mlflow", "prefect": "prefect_api", "api": "api", "receiver": "receiver"}


def require(endpoints: Endpoints, *services: str) -> None:
    """Check that each named service answers.

    Raises:
        Unreachable: one line naming the first service that does not, the URL tried and how to start it.
    """
    urls = health_urls(endpoints)
    for service in services:
        url = urls.get(service)
        if url is None or answers(url):
            continue
        base = getattr(endpoints, SERVICE_URLS[service])
        source = endpoints.sources.get(SERVICE_URLS[service], "")
        via = f" (from {source})" if source and source != "default" else ""
        raise Unreachable(f"cannot reach {service} at {base}{via}: {endpoints.start_hint()}")
