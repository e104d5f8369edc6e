"""The Pulumi program (pulumi-docker): the stack of docker-compose.yml, built from the same service table.

Config (``pulumi config set``; keys in :data:`infra.services.VARIABLES`): ``dbPassword`` and ``adminToken``
are required secrets; ``dbUser``, ``imageTag``, ``mlflowPort``, ``prefectPort``, ``apiPort`` and
``trainingTrials`` have defaults; ``memoryMb`` (an object, service -> MB) overrides container sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_docker as docker

from infra.services import (
    APP_IMAGE,
    IMAGE_REPOSITORY,
    IMAGE_TAG,
    INIT_SQL_PATH,
    NETWORK,
    SERVICES,
    VARIABLES,
    VOLUMES,
    Service,
    init_sql,
    references,
    render,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
HEALTH_WAIT_S = 600


@dataclass(frozen=True)
class StackConfig:
    """Resolved configuration: plain values, and secrets kept as secret outputs."""

    values: Mapping[str, str]
    secrets: Mapping[str, pulumi.Output[str]]
    memory_mb: Mapping[str, int] = field(default_factory=dict)
    context: str = str(REPO_ROOT)


def read_config(config: pulumi.Config | None = None) -> StackConfig:
    """Read the stack configuration (every variable of the table, by its config key)."""
    config = config or pulumi.Config()
    values: dict[str, str] = {}
    secrets: dict[str, pulumi.Output[str]] = {}
    for name, variable in VARIABLES.items():
        if variable.secret:
            secrets[name] = config.require_secret(variable.config_key)
        elif variable.default is None:
            values[name] = config.require(variable.config_key)
        elif value := config.get(variable.config_key):
            # Unset keys stay out: the templates carry the same defaults as docker-compose.yml.
            values[name] = value
    memory = config.get_object("memoryMb") or {}
    if not isinstance(memory, dict):
        raise ValueError("memoryMb must be an object: service name -> megabytes")
    return StackConfig(values=values, secrets=secrets, memory_mb={str(k): int(v) for k, v in memory.items()})


def fill(template: str, config: StackConfig) -> pulumi.Input[str]:
    """Render a template; the result is a secret output when it uses a secret."""
    used = [name for name in references(template) if name in config.secrets]
    if not used:
        return render(template, config.values)
    return pulumi.Output.all(*(config.secrets[name] for name in used)).apply(
        lambda resolved: render(template, {**config.values, **dict(zip(used, resolved, strict=True))})
    )


def _envs(service: Service, config: StackConfig) -> list[pulumi.Input[str]]:
    return [fill(f"{key}={value}", config) for key, value in service.environment.items()]


def _healthcheck(service: Service, config: StackConfig) -> docker.ContainerHealthcheckArgs | None:
    check = service.healthcheck
    if check is None:
        # A job that runs to completion has nothing to check (the image's default checks the API).
        return docker.ContainerHealthcheckArgs(tests=["NONE"]) if service.one_shot else None
    return docker.ContainerHealthcheckArgs(
        tests=["CMD", *(fill(part, config) for part in check.test)],
        interval=f"{check.interval_s}s",
        timeout=f"{check.timeout_s}s",
        retries=check.retries,
        start_period=f"{check.start_period_s}s",
    )


def build_stack(config: StackConfig) -> dict[str, docker.Container]:
    """Declare the image, network, volumes and one container per service of the table."""
    prefix = f"reggaeton-{pulumi.get_stack()}"
    tag = render(IMAGE_TAG, config.values)
    app_image = docker.Image(
        "app-image",
        image_name=f"{IMAGE_REPOSITORY}:{tag}",
        build=docker.DockerBuildArgs(
            context=config.context, dockerfile=str(Path(config.context) / "Dockerfile")
        ),
        skip_push=True,
    )
    remote_images: dict[str, docker.RemoteImage] = {}
    network = docker.Network(NETWORK, name=f"{prefix}-{NETWORK}")
    volumes = {name: docker.Volume(name, name=f"{prefix}-{name}") for name in VOLUMES}

    containers: dict[str, docker.Container] = {}
    for service in SERVICES:
        if service.image == APP_IMAGE:
            image: pulumi.Input[str] = app_image.image_name
        else:
            if service.image not in remote_images:
                remote_images[service.image] = docker.RemoteImage(
                    service.image.replace(":", "-"), name=service.image, keep_locally=True
                )
            image = remote_images[service.image].image_id
        uploads = (
            [docker.ContainerUploadArgs(file=INIT_SQL_PATH, content=init_sql())]
            if service.name == "postgres"
            else None
        )
        containers[service.name] = docker.Container(
            service.name,
            name=f"{prefix}-{service.name}",
            image=image,
            command=[fill(part, config) for part in service.command] if service.command else None,
            envs=_envs(service, config),
            ports=[
                docker.ContainerPortArgs(
                    internal=port.container, external=int(render(port.host, config.values)), ip="127.0.0.1"
                )
                for port in service.ports
            ],
            healthcheck=_healthcheck(service, config),
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=network.name, aliases=[service.name])
            ],
            volumes=[
                docker.ContainerVolumeArgs(volume_name=volumes[name].name, container_path=path)
                for name, path in service.volumes.items()
            ],
            uploads=uploads,
            memory=config.memory_mb.get(service.name, service.memory_mb),
            restart="no" if service.one_shot else "unless-stopped",
            # One-shot jobs run to completion during `pulumi up`; the others must become healthy.
            must_run=not service.one_shot,
            attach=service.one_shot,
            wait=service.healthcheck is not None,
            wait_timeout=HEALTH_WAIT_S if service.healthcheck is not None else None,
            opts=pulumi.ResourceOptions(depends_on=[containers[name] for name in service.depends_on]),
        )
    return containers


def export_endpoints(config: StackConfig) -> None:
    """Stack outputs: the URLs people open (never a secret)."""
    for service in SERVICES:
        for port in service.ports:
            pulumi.export(f"{service.name}_url", f"http://127.0.0.1:{render(port.host, config.values)}")


def main() -> dict[str, docker.Container]:
    """The program: read config, declare the stack, export the URLs."""
    config = read_config()
    containers = build_stack(config)
    export_endpoints(config)
    return containers
