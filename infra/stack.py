"""The Pulumi program (pulumi-docker): the stack of docker-compose.yml, built from the same service table.

Config (``pulumi config set``; keys in :data:`infra.services.VARIABLES`). Required secrets (``pulumi config
set --secret``; an example value is refused): ``dbPassword`` (the Postgres superuser's), one per service
role ``mlflowDbPassword``, ``prefectDbPassword``, ``optunaDbPassword``, ``predictionsDbPassword``,
``workerDbPassword``, ``apiDbPassword``; the API's ``adminToken`` and ``feedbackToken``; MLflow's
``mlflowAdminPassword``, ``mlflowFlaskSecret`` and the accounts' ``mlflowTrainingPassword``,
``mlflowPromotionPassword``, ``mlflowMonitoringPassword``, ``mlflowServingPassword``; Prefect's
``prefectAuthString``; the decision signing key ``decisionSigningKey``. Required plain: the public half,
``decisionVerifyKey``. Optional secrets: ``apiKey`` (POST /predict then needs it) and ``webhookUrl`` (where
alerts go; unset: the stack's receiver container). ``python -m infra.check_secrets --new-env FILE`` makes
fresh values to copy. ``dbUser``, ``imageTag``, ``mlflowPort``, ``prefectPort``, ``apiPort``,
``apiReplicas`` (API containers behind the balancer), ``workerReplicas`` (worker containers, each serving
the work pool and, one run at a time, the tuning pool), ``trainingTrials``, ``trainingParallelWorkers``
(tuning runs per retrain) and ``promotionPolicy`` (offline, shadow or canary) have defaults; ``memoryMb``
(an object, service -> MB) overrides sizes.

What the provider does not do by itself, the program does: containers run the built image by its id (a
rebuild replaces them), a container that depends on a one-shot job's success is created only when the
job exited 0 (else the update fails, saying why), containers are stopped with a grace period,
memory+swap is explicit, the bootstrap may run past the provider's 20-minute create timeout, the files a
service needs (the Postgres scripts) are uploaded, and the data volumes are left in place by ``pulumi
destroy`` (``docker volume rm`` them to drop the data).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_docker as docker

from infra.services import (
    BUILT_IMAGES,
    IMAGE_TAG,
    NETWORK,
    SERVICES,
    TRAIN_TIMEOUT_S,
    VARIABLES,
    VOLUMES,
    Service,
    references,
    render,
)
from reggaeton.settings import EXAMPLE_SECRETS

REPO_ROOT = Path(__file__).resolve().parent.parent
HEALTH_WAIT_S = 600
# A one-shot job's container is created when it has exited: the bootstrap's own training timeout, plus
# deploying and a margin, beyond the provider's default create timeout of 20 minutes.
ONE_SHOT_CREATE_TIMEOUT = f"{(TRAIN_TIMEOUT_S + 15 * 60) // 60}m"
CONTAINER_TYPE = "docker:index/container:Container"


def _refuse_example(config_key: str, value: str) -> str:
    if value in EXAMPLE_SECRETS:
        raise ValueError(
            f"config {config_key} is an example value, not a secret: "
            f"pulumi config set --secret {config_key} <your own>"
        )
    return value


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
        if variable.secret and variable.default is None:
            secrets[name] = config.require_secret(variable.config_key).apply(
                functools.partial(_refuse_example, variable.config_key)
            )
        elif variable.secret:
            # Optional (the API key, the webhook): unset keeps the template's default.
            optional = config.get_secret(variable.config_key)
            if optional is not None:
                secrets[name] = optional.apply(functools.partial(_refuse_example, variable.config_key))
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


def completed_successfully(job: docker.Container, name: str) -> pulumi.Output[docker.Container]:
    """The job, as a dependency that resolves only when it exited 0: compose's service_completed_successfully.

    The provider records a one-shot container's exit code and reports success whatever it is. A resource
    that depends on this output is not created when the code is not 0, and the update fails with why.
    It changes no input, so it never makes a dependent differ from its last state.
    """

    def check(code: int | None) -> docker.Container:
        if code != 0:
            urn = f"urn:pulumi:{pulumi.get_stack()}::{pulumi.get_project()}::{CONTAINER_TYPE}::{name}"
            raise RuntimeError(
                f"the one-shot job {name!r} exited with code {code}, so the stack is not up: read its output "
                f"with `docker logs {_container_name(name)}`, fix the cause, then run it again with "
                f"`pulumi up --replace '{urn}'`"
            )
        return job

    return job.exit_code.apply(check)


def _prefix() -> str:
    """What every Docker object of this stack is named after (containers, network, volumes)."""
    return f"reggaeton-{pulumi.get_stack()}"


def _container_name(service: str) -> str:
    return f"{_prefix()}-{service}"


@dataclass(frozen=True)
class _Shared:
    """What every container of the stack refers to: the built images, the network, the volumes."""

    built_images: dict[str, docker.Image]
    network: docker.Network
    volumes: dict[str, docker.Volume]
    remote_images: dict[str, docker.RemoteImage] = field(default_factory=dict)

    def image_of(self, service: Service) -> pulumi.Input[str]:
        if service.image in self.built_images:
            # The built image's id, not its tag: a rebuild under the same tag changes it, and so replaces
            # exactly the containers that run this image.
            return self.built_images[service.image].repo_digest
        if service.image not in self.remote_images:
            self.remote_images[service.image] = docker.RemoteImage(
                service.image.replace(":", "-"), name=service.image, keep_locally=True
            )
        return self.remote_images[service.image].image_id


def _shared(config: StackConfig) -> _Shared:
    prefix = _prefix()
    tag = render(IMAGE_TAG, config.values)
    used = {service.image for service in SERVICES}
    built_images = {
        image: docker.Image(
            f"{image}-image",
            image_name=f"{repository}:{tag}",
            build=docker.DockerBuildArgs(
                context=config.context, dockerfile=str(Path(config.context) / "Dockerfile"), target=target
            ),
            skip_push=True,
        )
        for image, (repository, target) in BUILT_IMAGES.items()
        if image in used
    }
    network = docker.Network(NETWORK, name=f"{prefix}-{NETWORK}")
    # `pulumi destroy` leaves the data where it is, as `docker-compose down` does; a later `up` reuses it.
    volumes = {
        name: docker.Volume(name, name=f"{prefix}-{name}", opts=pulumi.ResourceOptions(retain_on_delete=True))
        for name in VOLUMES
    }
    return _Shared(built_images, network, volumes)


def replica_names(service: Service, config: StackConfig) -> list[str]:
    """The container names of a service: itself, or ``<name>-1`` .. ``<name>-N`` for a replicated one."""
    if service.replicas is None:
        return [service.name]
    count = int(render(service.replicas, config.values))
    if count < 1:
        raise ValueError(f"{service.name} needs at least one replica, not {count}")
    return [f"{service.name}-{k}" for k in range(1, count + 1)]


def _container(
    service: Service,
    config: StackConfig,
    shared: _Shared,
    containers: Mapping[str, list[docker.Container]],
    name: str,
) -> docker.Container:
    """One container of a service of the table (``name``: one of its replicas), after what it depends on."""
    # The repository's files a service needs (compose bind-mounts them), uploaded before it starts.
    uploads = [
        docker.ContainerUploadArgs(file=path, content=(Path(config.context) / source).read_text())
        for path, source in service.files.items()
    ] or None
    after: list[pulumi.Input[pulumi.Resource]] = [c for dep in service.depends_on for c in containers[dep]]
    after += [
        completed_successfully(containers[dep][0], dep)
        for dep, condition in service.depends_on.items()
        if condition == "service_completed_successfully"
    ]
    memory = config.memory_mb.get(service.name, service.memory_mb)
    return docker.Container(
        name,
        name=_container_name(name),
        image=shared.image_of(service),
        entrypoints=list(service.entrypoint) if service.entrypoint else None,
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
            # Replicas share the service's alias: Docker's DNS answers all of them (the balancer's discovery).
            docker.ContainerNetworksAdvancedArgs(name=shared.network.name, aliases=[service.name])
        ],
        volumes=[
            docker.ContainerVolumeArgs(volume_name=shared.volumes[name].name, container_path=path)
            for name, path in service.volumes.items()
        ],
        uploads=uploads,
        memory=memory,
        # Unset, Docker computes a swap limit (twice the memory) that reads back as a change on every up.
        memory_swap=memory,
        restart="no" if service.one_shot else "unless-stopped",
        # One-shot jobs run to completion during `pulumi up`; the others must become healthy.
        must_run=not service.one_shot,
        attach=service.one_shot,
        wait=service.healthcheck is not None,
        wait_timeout=HEALTH_WAIT_S if service.healthcheck is not None else None,
        # Stopped (SIGTERM, then this long) before a replace or destroy removes it, never just killed;
        # `docker stop` (no -t) and a daemon shutdown give it as long (compose's stop_grace_period).
        destroy_grace_seconds=service.stop_grace_s,
        stop_timeout=service.stop_grace_s,
        opts=pulumi.ResourceOptions(
            depends_on=after,
            custom_timeouts=pulumi.CustomTimeouts(create=ONE_SHOT_CREATE_TIMEOUT)
            if service.one_shot
            else None,
        ),
    )


def build_stack(config: StackConfig) -> dict[str, docker.Container]:
    """Declare the images, network, volumes and the containers of every service of the table."""
    shared = _shared(config)
    containers: dict[str, list[docker.Container]] = {}
    declared: dict[str, docker.Container] = {}
    for service in SERVICES:
        names = replica_names(service, config)
        containers[service.name] = [_container(service, config, shared, containers, name) for name in names]
        declared.update(zip(names, containers[service.name], strict=True))
    return declared


def export_endpoints(config: StackConfig) -> None:
    """Stack outputs: the URLs people open (never a secret), and the volumes `destroy` leaves behind."""
    for service in SERVICES:
        for port in service.ports:
            pulumi.export(f"{service.name}_url", f"http://127.0.0.1:{render(port.host, config.values)}")
    pulumi.export("volumes", [f"{_prefix()}-{name}" for name in VOLUMES])


def main() -> dict[str, docker.Container]:
    """The program: read config, declare the stack, export the URLs."""
    config = read_config()
    containers = build_stack(config)
    export_endpoints(config)
    return containers
