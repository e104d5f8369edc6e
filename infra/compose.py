"""docker-compose.yml from the service table, and the shape both the compose file and Pulumi are compared on.

``python -m infra.compose`` rewrites ``docker-compose.yml``; the tests fail when the committed file differs
from the table (edit the table, then regenerate).
The file avoids what docker-compose v1 (1.29, Debian's package) lacks and works with ``docker compose`` v2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from infra.services import (
    BUILT_IMAGES,
    IMAGE_TAG,
    NETWORK,
    SERVICES,
    VOLUMES,
    Healthcheck,
    Service,
    render,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# The built images by their compose reference (repository:${IMAGE_TAG:-latest}), and back.
IMAGE_REFS = {image: f"{repository}:{IMAGE_TAG}" for image, (repository, _) in BUILT_IMAGES.items()}
_BUILT_BY_REF = {ref: image for image, ref in IMAGE_REFS.items()}

HEADER = """\
# The whole stack on one machine: `cp .env.example .env`, edit the secrets, `docker-compose up -d`.
# Generated from infra/services.py by `python -m infra.compose` (the Pulumi program reads the same table);
# tests/infra fails when this file and the table drift apart. Ports are published on 127.0.0.1 only.
"""


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def _healthcheck(check: Healthcheck) -> dict[str, Any]:
    return {
        "test": ["CMD", *check.test],
        "interval": _duration(check.interval_s),
        "timeout": _duration(check.timeout_s),
        "retries": check.retries,
        "start_period": _duration(check.start_period_s),
    }


def _compose_service(service: Service) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if service.image in BUILT_IMAGES:
        out["image"] = IMAGE_REFS[service.image]
        # Every service of a built image may build: docker-compose v1 would otherwise try to pull it.
        out["build"] = {"context": ".", "target": BUILT_IMAGES[service.image][1]}
    else:
        out["image"] = service.image
    if service.replicas is not None:
        out["scale"] = service.replicas
    if service.entrypoint is not None:
        out["entrypoint"] = list(service.entrypoint)
    if service.command is not None:
        out["command"] = list(service.command)
    if service.environment:
        out["environment"] = dict(service.environment)
    if service.ports:
        out["ports"] = [f"127.0.0.1:{port.host}:{port.container}" for port in service.ports]
    volumes = [f"{name}:{path}" for name, path in service.volumes.items()]
    volumes += [f"./{source}:{path}:ro" for path, source in service.files.items()]
    if volumes:
        out["volumes"] = volumes
    if service.healthcheck is not None:
        out["healthcheck"] = _healthcheck(service.healthcheck)
    elif service.one_shot:
        # A job that runs to completion has nothing to check (the image's default checks the API).
        out["healthcheck"] = {"disable": True}
    if service.depends_on:
        out["depends_on"] = {name: {"condition": cond} for name, cond in service.depends_on.items()}
    out["networks"] = [NETWORK]
    out["mem_limit"] = f"{service.memory_mb}m"
    out["memswap_limit"] = f"{service.memory_mb}m"  # no swap, as in the Pulumi stack
    out["stop_grace_period"] = _duration(service.stop_grace_s)
    out["restart"] = "no" if service.one_shot else "unless-stopped"
    return out


def compose_document() -> dict[str, Any]:
    """The compose file as a dictionary."""
    return {
        "services": {service.name: _compose_service(service) for service in SERVICES},
        "volumes": {name: {} for name in VOLUMES},
        "networks": {NETWORK: {}},
    }


def compose_text() -> str:
    """The compose file as YAML text."""
    body = yaml.safe_dump(compose_document(), sort_keys=False, width=200, default_flow_style=False)
    return HEADER + body


_PORT = re.compile(r"^(?P<ip>[\d.]+):(?P<host>.+):(?P<container>\d+)$")
_MEMORY = re.compile(r"^(?P<mb>\d+)m$")
_SECONDS = re.compile(r"^(?P<s>\d+)s$")


def _megabytes(value: Any) -> int | None:
    match = _MEMORY.match(str(value))
    return int(match["mb"]) if match else None


def _seconds(value: Any) -> int | None:
    # compose's default stop grace period is 10 s; the table always states one.
    match = _SECONDS.match(str(value or "10s"))
    return int(match["s"]) if match else None


def compose_shape(document: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Normalise a compose document to the shape compared with the table and with Pulumi.

    Per service: image (the table's name for a built image), replica count, entrypoint, command,
    environment keys, ports as ``(ip, host port, container port)``, healthcheck command, dependencies,
    volumes, files of the repository mounted (by their path in the container), memory and memory+swap,
    stop grace period, one-shot.
    Templates are rendered with ``values`` (what ``.env`` or the Pulumi config would hold).
    """

    def fill(parts: list[Any] | None) -> list[str] | None:
        return None if parts is None else [render(str(part), values) for part in parts]

    shape: dict[str, dict[str, Any]] = {}
    for name, spec in document.get("services", {}).items():
        image = spec.get("image", "")
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        ports = []
        for port in spec.get("ports") or []:
            match = _PORT.match(str(port))
            ports.append(
                (match["ip"], int(render(match["host"], values)), int(match["container"]))
                if match
                else ("0.0.0.0", str(port), 0)
            )
        test = (spec.get("healthcheck") or {}).get("test")
        if test and test[0] == "NONE":
            test = None
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        shape[name] = {
            "image": _BUILT_BY_REF.get(image, image),
            "replicas": int(render(str(spec.get("scale", 1)), values)),
            "entrypoint": fill(spec.get("entrypoint")),
            "command": fill(spec.get("command")),
            "environment": sorted(environment),
            "ports": sorted(ports),
            "healthcheck": fill(test[1:]) if test else None,
            "depends_on": {dep: cond.get("condition") for dep, cond in depends.items()},
            "volumes": sorted(
                str(v).split(":", 2)[0] + ":" + str(v).split(":", 2)[1]
                for v in spec.get("volumes") or []
                if not str(v).startswith(".")
            ),
            "files": sorted(
                str(v).split(":", 2)[1] for v in spec.get("volumes") or [] if str(v).startswith("./")
            ),
            "memory_mb": _megabytes(spec.get("mem_limit")),
            "memory_swap_mb": _megabytes(spec.get("memswap_limit")),
            "stop_grace_s": _seconds(spec.get("stop_grace_period")),
            "one_shot": spec.get("restart") == "no",
        }
    return shape


def table_shape(
    values: Mapping[str, str], services: tuple[Service, ...] = SERVICES
) -> dict[str, dict[str, Any]]:
    """The service table in the same shape as :func:`compose_shape`."""

    def fill(parts: tuple[str, ...] | None) -> list[str] | None:
        return None if parts is None else [render(part, values) for part in parts]

    return {
        service.name: {
            "image": service.image,
            "replicas": int(render(service.replicas or "1", values)),
            "entrypoint": fill(service.entrypoint),
            "command": fill(service.command),
            "environment": sorted(service.environment),
            "ports": sorted(
                ("127.0.0.1", int(render(port.host, values)), port.container) for port in service.ports
            ),
            "healthcheck": fill(service.healthcheck.test) if service.healthcheck else None,
            "depends_on": dict(service.depends_on),
            "volumes": sorted(f"{name}:{path}" for name, path in service.volumes.items()),
            "files": sorted(service.files),
            "memory_mb": service.memory_mb,
            "memory_swap_mb": service.memory_mb,
            "stop_grace_s": service.stop_grace_s,
            "one_shot": service.one_shot,
        }
        for service in services
    }


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """Read a compose file."""
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a compose document")
    return loaded


def main() -> int:
    """Regenerate the compose file from the table."""
    COMPOSE_FILE.write_text(compose_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
