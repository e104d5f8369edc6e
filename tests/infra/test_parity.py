"""docker-compose.yml and the Pulumi stack declare the same stack: the one in infra/services.py."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import yaml
from pulumi_harness import run_program
from stack_secrets import SECRET_CONFIG_KEYS, secret_values

from infra import compose
from infra.services import SERVICES, VARIABLES, Port, Service, inline_defaults, references, render
from reggaeton.settings import EXAMPLE_SECRETS

# What .env (compose) and the Pulumi config (stack) hold: only the secrets (every default applies, so a
# changed default shows), and every variable set (so a renamed variable shows).
SECRETS = secret_values("parity")
CUSTOM = SECRETS | {
    "POSTGRES_USER": "someone",
    "IMAGE_TAG": "custom",
    "MLFLOW_PORT": "15001",
    "PREFECT_PORT": "14201",
    "API_PORT": "18001",
    "API_REPLICAS": "3",
    "TRAINING_TRIALS": "3",
}
VALUE_SETS = {"defaults": SECRETS, "custom": CUSTOM}
PULUMI_SECRETS = SECRET_CONFIG_KEYS


REPLICATED = {s.name for s in SERVICES if s.replicas is not None}


def pulumi_run_shape(values: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Run the Pulumi program under mocks with config equivalent to ``values`` and return its shape."""
    from pulumi_harness import container_shape

    config = {VARIABLES[name].config_key: value for name, value in values.items()}
    tag = values.get("IMAGE_TAG", VARIABLES["IMAGE_TAG"].default)
    assert tag is not None
    return comparable(container_shape(run_program(config, PULUMI_SECRETS), tag, REPLICATED))


def comparable(shape: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Dependencies by name only: compose states conditions, Pulumi orders and waits (checked elsewhere)."""
    return {name: {**spec, "depends_on": sorted(spec["depends_on"])} for name, spec in shape.items()}


def differences(left: dict[str, dict[str, Any]], right: dict[str, dict[str, Any]]) -> list[str]:
    """Human-readable differences between two shapes (empty when they agree)."""
    found = [f"service {name!r} only in one of them" for name in sorted(set(left) ^ set(right))]
    for name in sorted(set(left) & set(right)):
        for key in sorted(set(left[name]) | set(right[name])):
            if left[name].get(key) != right[name].get(key):
                found.append(f"{name}.{key}: {left[name].get(key)!r} != {right[name].get(key)!r}")
    return found


@pytest.fixture(scope="module")
def pulumi_shapes() -> dict[str, dict[str, dict[str, Any]]]:
    return {label: pulumi_run_shape(values) for label, values in VALUE_SETS.items()}


def drift(document: dict[str, Any], shapes: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Differences between a compose document and the Pulumi shapes, over every value set."""
    return [
        f"[{label}] {line}"
        for label, values in VALUE_SETS.items()
        for line in differences(comparable(compose.compose_shape(document, values)), shapes[label])
    ]


@pytest.fixture(scope="module")
def compose_document() -> dict[str, Any]:
    return compose.load_compose()


def test_compose_file_is_generated_from_the_table() -> None:
    assert compose.COMPOSE_FILE.read_text() == compose.compose_text(), "run `python -m infra.compose`"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_compose_file_declares_the_table(compose_document: dict[str, Any], values: dict[str, str]) -> None:
    assert differences(compose.compose_shape(compose_document, values), compose.table_shape(values)) == []


def test_pulumi_stack_and_compose_file_declare_the_same_stack(
    compose_document: dict[str, Any], pulumi_shapes: dict[str, dict[str, dict[str, Any]]]
) -> None:
    for shape in pulumi_shapes.values():
        assert set(shape) == {s.name for s in SERVICES}
    assert pulumi_shapes["custom"]["balancer"]["ports"] == [("127.0.0.1", 18001, 8000)]
    assert pulumi_shapes["custom"]["api"]["ports"] == []  # replicas are reached through the balancer
    assert (pulumi_shapes["defaults"]["api"]["replicas"], pulumi_shapes["custom"]["api"]["replicas"]) == (
        2,
        3,
    )
    assert pulumi_shapes["custom"]["api"]["image"] == "serving"
    assert pulumi_shapes["custom"]["balancer"]["image"] == "balancer"
    assert drift(compose_document, pulumi_shapes) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("rename-service", "service 'model-api' only in one of them"),
        ("change-port", "balancer.ports"),
        ("change-replicas", "[custom] api.replicas"),
        ("change-balancer-image", "balancer.image"),
        ("drop-balancer-check", "balancer.healthcheck"),
        ("rename-port-variable", "[custom] mlflow.ports"),
        ("change-command", "worker.command"),
        ("drop-env-key", "worker.environment"),
        ("add-env-key", "api.environment"),
        ("change-image", "mlflow.image"),
        ("drop-watchdog", "service 'watchdog' only in one of them"),
        ("shorter-worker-grace", "worker.stop_grace_s"),
    ],
)
def test_parity_fails_when_the_compose_file_drifts(
    compose_document: dict[str, Any],
    pulumi_shapes: dict[str, dict[str, dict[str, Any]]],
    change: str,
    expected: str,
) -> None:
    mutated = copy.deepcopy(compose_document)
    services = mutated["services"]
    if change == "rename-service":
        services["model-api"] = services.pop("api")
    elif change == "change-port":
        services["balancer"]["ports"] = ["127.0.0.1:${API_PORT:-8080}:8000"]
    elif change == "change-replicas":
        services["api"]["scale"] = "${API_REPLICA_COUNT:-2}"
    elif change == "change-balancer-image":
        services["balancer"]["image"] = "haproxy:2.6"
    elif change == "drop-balancer-check":
        del services["balancer"]["healthcheck"]
    elif change == "rename-port-variable":
        services["mlflow"]["ports"] = ["127.0.0.1:${MLFLOW_HOST_PORT:-5000}:5000"]
    elif change == "change-command":
        services["worker"]["command"][services["worker"]["command"].index("reggaeton-pool")] = "other-pool"
    elif change == "drop-env-key":
        del services["worker"]["environment"]["PREFECT_API_URL"]
    elif change == "add-env-key":
        services["api"]["environment"]["REGGAETON_SERVING__DEBUG"] = "true"
    elif change == "change-image":
        services["mlflow"]["image"] = "mlflow/mlflow:latest"
    elif change == "drop-watchdog":
        del services["watchdog"]
    elif change == "shorter-worker-grace":
        services["worker"]["stop_grace_period"] = "10s"
    # Round-trip through YAML, as if someone had edited the file.
    edited = yaml.safe_load(yaml.safe_dump(mutated))
    found = drift(edited, pulumi_shapes)
    assert any(expected in line for line in found), found


def _replace(service_name: str, /, **changes: Any) -> tuple[Service, ...]:
    return tuple(dataclasses.replace(s, **changes) if s.name == service_name else s for s in SERVICES)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (_replace("balancer", name="lb"), "service 'lb' only in one of them"),
        (_replace("mlflow", ports=(Port(5000, "${MLFLOW_PORT:-5001}"),)), "mlflow.ports"),
        (_replace("api", command=("uvicorn", "serving.app:app")), "api.command"),
        (_replace("api", replicas="4"), "api.replicas"),
        (_replace("balancer", depends_on={}), "balancer.depends_on"),
    ],
)
def test_parity_fails_when_the_pulumi_side_drifts(
    monkeypatch: pytest.MonkeyPatch,
    compose_document: dict[str, Any],
    table: tuple[Service, ...],
    expected: str,
) -> None:
    from infra import stack

    # The Pulumi program reads the table; feed it a drifted copy while the compose file stays as committed.
    monkeypatch.setattr(stack, "SERVICES", table)
    drifted = {label: pulumi_run_shape(values) for label, values in VALUE_SETS.items()}
    found = drift(compose_document, drifted)
    assert any(expected in line for line in found), found


def test_templates_only_use_declared_variables_and_render_like_compose() -> None:
    used = {
        name
        for service in SERVICES
        for template in [
            *service.environment.values(),
            *(service.command or ()),
            *(p.host for p in service.ports),
            *(service.healthcheck.test if service.healthcheck else ()),
        ]
        for name in references(template)
    }
    assert used <= set(VARIABLES)
    # A default stated inline (for compose) is the variable's declared default.
    for service in SERVICES:
        for template in [
            *service.environment.values(),
            *(service.command or ()),
            *(p.host for p in service.ports),
        ]:
            for name, default in inline_defaults(template).items():
                assert default == VARIABLES[name].default, (service.name, template)
    assert render("${A:-5000}", {}) == "5000"
    assert render("${A:-5000}", {"A": "6000"}) == "6000"
    assert render("x${A:?set A}y", {"A": "1"}) == "x1y"
    with pytest.raises(KeyError, match="set A"):
        render("${A:?set A}", {})


def test_only_loopback_ports_are_published(compose_document: dict[str, Any]) -> None:
    for name, spec in compose.compose_shape(compose_document, CUSTOM).items():
        assert all(ip == "127.0.0.1" for ip, _, _ in spec["ports"]), name


def test_env_example_covers_every_variable() -> None:
    example = (compose.REPO_ROOT / ".env.example").read_text()
    keys = {
        line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")
    }
    assert keys == set(VARIABLES)
    values = dict(
        line.split("=", 1) for line in example.splitlines() if "=" in line and not line.startswith("#")
    )
    # Whatever .env.example suggests for a required secret is refused, so `cp .env.example .env` alone never
    # starts; an optional one (API key, webhook) is left empty: its default applies.
    assert {
        values[name] for name, v in VARIABLES.items() if v.secret and v.default is None
    } <= EXAMPLE_SECRETS
    assert {name: values[name] for name, v in VARIABLES.items() if v.secret and v.default is not None} == {
        "API_KEY": "",
        "WEBHOOK_URL": "",
    }
