"""Runs the Pulumi program under Pulumi's own mocks and records what it declares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import MockCallArgs, MockResourceArgs, Mocks

PROJECT = "reggaeton"
STACK = "dev"
CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
APP_IMAGE_ID = "sha256:1111"
APP_IMAGE_RESOURCE = "app-image"
# How the engine receives a secret value (Pulumi's wire format for secrets).
SECRET_SIGNATURE = "4dabf18193072939515e22adb298388d"


def unwrap(value: Any) -> tuple[Any, bool]:
    """A value as the program meant it, and whether it (or a part of it) reached the engine as a secret."""
    if isinstance(value, dict) and SECRET_SIGNATURE in value:
        return unwrap(value["value"])[0], True
    if isinstance(value, dict):
        pairs = {key: unwrap(item) for key, item in value.items()}
        return {key: pair[0] for key, pair in pairs.items()}, any(pair[1] for pair in pairs.values())
    if isinstance(value, list):
        items = [unwrap(item) for item in value]
        return [item[0] for item in items], any(item[1] for item in items)
    return value, False


class RecordingMocks(Mocks):
    """A fake engine: every resource gets its inputs back as outputs, plus what the real provider computes.

    The built image's id and the one-shot containers' exit codes (0 unless ``exit_codes`` says otherwise)
    are what pulumi-docker reports after a build and after a container with ``attach`` has exited.
    """

    def __init__(self, image_id: str = APP_IMAGE_ID, exit_codes: dict[str, int] | None = None) -> None:
        self.resources: list[MockResourceArgs] = []
        self.image_id = image_id
        self.exit_codes = exit_codes or {}

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == REMOTE_IMAGE:
            outputs["imageId"] = args.inputs["name"]
        if args.typ == IMAGE:
            # A local, unpushed image: the provider's repoDigest is the image id (``image_id`` for the
            # platform image, one per name for the others).
            outputs["repoDigest"] = (
                self.image_id if args.name == APP_IMAGE_RESOURCE else f"sha256:{args.name}"
            )
        if args.typ == CONTAINER and args.inputs.get("attach"):
            outputs["exitCode"] = self.exit_codes.get(args.name, 0)
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None

    def of_type(self, typ: str) -> dict[str, dict[str, Any]]:
        """Inputs of the resources of one type, by name, secrets unwrapped."""
        return {r.name: unwrap(r.inputs)[0] for r in self.resources if r.typ == typ}

    def secret_inputs(self, typ: str) -> dict[str, set[str]]:
        """Which inputs of each resource of one type the engine received as secrets."""
        return {
            r.name: {key for key, value in r.inputs.items() if unwrap(value)[1]}
            for r in self.resources
            if r.typ == typ
        }


@dataclass
class Run:
    """What one run of the program declared."""

    mocks: RecordingMocks
    containers: dict[str, Any]
    depends_on: dict[str, list[str]] = field(default_factory=dict)
    options: dict[str, pulumi.ResourceOptions] = field(default_factory=dict)
    secret: dict[str, dict[str, bool]] = field(default_factory=dict)


def run_program(
    config: dict[str, str],
    secret_keys: list[str],
    image_id: str = APP_IMAGE_ID,
    exit_codes: dict[str, int] | None = None,
    mocks: RecordingMocks | None = None,
) -> Run:
    """Run ``infra.stack.main`` under mocks with this config (keys without the project prefix).

    ``mocks`` (else fresh ones) keep what was declared even when the program fails.
    """
    from infra import stack

    # Pulumi's runtime asks asyncio.get_event_loop() from synchronous code; after an asyncio.run() in
    # the same process (another module's test on this worker) there is none until one is set.
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = mocks or RecordingMocks(image_id, exit_codes)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=STACK, preview=False)
    pulumi.runtime.set_all_config(
        {f"{PROJECT}:{key}": value for key, value in config.items()},
        [f"{PROJECT}:{key}" for key in secret_keys],
    )
    run = Run(mocks=mocks, containers={})

    def record_dependencies(args: pulumi.ResourceTransformationArgs) -> None:
        run.options[args.name] = args.opts
        if args.type_ == CONTAINER:
            # Plain resources by name; the outputs that gate on a job's success are checked by behaviour.
            deps = args.opts.depends_on or []
            run.depends_on[args.name] = sorted(
                dep._name  # type: ignore[attr-defined]
                for dep in deps  # type: ignore[union-attr]
                if isinstance(dep, pulumi.Resource)
            )

    @pulumi.runtime.test
    def program() -> Any:
        pulumi.runtime.register_stack_transformation(record_dependencies)  # type: ignore[arg-type]
        run.containers = stack.main()

        async def secrecy() -> None:
            for name, container in run.containers.items():
                run.secret[name] = {
                    "envs": await container.envs.is_secret(),
                    "command": await container.command.is_secret(),
                }

        return pulumi.Output.from_input(secrecy())

    program()
    return run


def service_of(container: str, replicated: set[str]) -> str:
    """The table's service a container belongs to: ``api-2`` -> ``api`` when ``api`` is replicated."""
    base, _, number = container.rpartition("-")
    return base if base in replicated and number.isdigit() else container


def container_shape(run: Run, tag: str, replicated: set[str]) -> dict[str, dict[str, Any]]:
    """The declared containers in the shape of ``infra.compose.compose_shape``, replicas grouped.

    A built image (platform, serving, balancer) is named as in the table (``app``, ...): containers
    reference it by its id. Every built image is tagged ``tag``.
    """
    from infra.services import BUILT_IMAGES

    images = run.mocks.of_type(IMAGE)
    ids = {run.mocks.image_id if name == APP_IMAGE_RESOURCE else f"sha256:{name}": name for name in images}
    by_resource = {f"{image}-image": image for image in BUILT_IMAGES}
    for name, inputs in images.items():
        repository, target = BUILT_IMAGES[by_resource[name]]
        assert (inputs["imageName"], inputs["build"]["target"]) == (f"{repository}:{tag}", target)
    prefix = f"reggaeton-{STACK}-"
    volume_names = {inputs["name"]: name for name, inputs in run.mocks.of_type(VOLUME).items()}
    shape: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for container, inputs in run.mocks.of_type(CONTAINER).items():
        assert inputs["name"] == prefix + container
        name = service_of(container, replicated)
        counts[name] = counts.get(name, 0) + 1
        image = inputs["image"]
        health = inputs.get("healthcheck")
        spec = {
            "image": by_resource[ids[image]] if image in ids else image,
            "entrypoint": list(inputs["entrypoints"]) if inputs.get("entrypoints") else None,
            "command": list(inputs["command"]) if inputs.get("command") else None,
            "environment": sorted(env.split("=", 1)[0] for env in inputs.get("envs", [])),
            "ports": sorted((p["ip"], p["external"], p["internal"]) for p in inputs.get("ports", [])),
            "healthcheck": list(health["tests"][1:]) if health and health["tests"][0] != "NONE" else None,
            "depends_on": sorted({service_of(dep, replicated) for dep in run.depends_on.get(container, [])}),
            "volumes": sorted(
                f"{volume_names[v['volumeName']]}:{v['containerPath']}" for v in inputs.get("volumes", [])
            ),
            "files": sorted(upload["file"] for upload in inputs.get("uploads") or []),
            "memory_mb": inputs.get("memory"),
            "memory_swap_mb": inputs.get("memorySwap"),
            # Pulumi's two stop settings (replace/destroy, `docker stop`) must agree to match compose's one.
            "stop_grace_s": grace
            if (grace := inputs.get("destroyGraceSeconds")) == inputs.get("stopTimeout")
            else {"destroyGraceSeconds": grace, "stopTimeout": inputs.get("stopTimeout")},
            "one_shot": inputs.get("restart") == "no",
        }
        # Replicas of one service are declared alike: one shape for all of them.
        assert shape.setdefault(name, spec) == spec, (container, shape[name], spec)
    return {name: {**spec, "replicas": counts[name]} for name, spec in shape.items()}
