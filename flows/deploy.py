"""`python -m flows.deploy`: work pools, deployments (prefect.yaml) and automations, idempotently.

Run it as often as you like against the same server: the work pools (main and tuning) are created only
when missing,
`prefect deploy` updates each deployment of prefect.yaml in place (their trigger automations are replaced by
name) and the notification automations are created, updated or left alone by name.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from adapters.prefect_api import prefect_api
from flows.automations import apply_automations
from reggaeton import names
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_FILE = "prefect.yaml"
DEPLOY_TIMEOUT_S = 600  # the `prefect deploy --all` command


def ensure_work_pool(settings: Settings, name: str | None = None) -> bool:
    """Create a process work pool (default: the settings' main pool) when missing. True when created."""
    name = name or settings.prefect.work_pool
    with prefect_api(settings), get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="Local process work pool of the reggaeton loop",
                )
            )
            logger.info("created work pool %s", name)
            return True


def deployment_pool(settings: Settings, deployment: str) -> str:
    """The work pool a deployment runs on: the tuning pool for the tuning runs, else the main one."""
    return settings.prefect.tuning_pool if deployment == names.TUNE_DEPLOYMENT else settings.prefect.work_pool


def deploy_environment(settings: Settings) -> dict[str, str]:
    """Environment for the `prefect deploy` child: the configured server, no prompts, no telemetry."""
    return {
        **os.environ,
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_CLI_PROMPT": "false",
        **names.TELEMETRY_OFF,
    }


def deployment_names(project_dir: Path = PROJECT_DIR, prefect_file: str = PREFECT_FILE) -> list[str]:
    """The deployment names declared in the prefect file."""
    config = yaml.safe_load((project_dir / prefect_file).read_text())
    return [str(entry["name"]) for entry in config.get("deployments") or []]


def deploy_all(settings: Settings, project_dir: Path = PROJECT_DIR, prefect_file: str = PREFECT_FILE) -> None:
    """`prefect deploy --all` of the file, from the project folder, each deployment on its configured pool.

    One command for all: each `prefect deploy` process spends ~5 CPU-seconds importing Prefect and the
    flows' modules, which one per deployment paid again for each (28 CPU-s for five, 8 for one). `--all`
    ignores `--pool`, so the command reads a copy of the file with each deployment's pool from the
    settings (a test's own pool names), written in a temporary folder: the project folder may be
    read-only (an image's /app, owned by root, deployed from by the bootstrap job as the app user). The
    worker later runs the flows from the folder the command runs in (Prefect's default pull step is the
    working directory, not the file's folder).

    Raises:
        RuntimeError: the command failed; its output is in the message.
    """
    config = yaml.safe_load((project_dir / prefect_file).read_text())
    for entry in config.get("deployments") or []:
        entry["work_pool"] = {
            **(entry.get("work_pool") or {}),
            "name": deployment_pool(settings, entry["name"]),
        }
    with tempfile.TemporaryDirectory(prefix="reggaeton-deploy-") as folder:
        copy = Path(folder) / Path(prefect_file).name
        copy.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(copy),
        ]
        done = subprocess.run(
            command,
            cwd=project_dir,
            env=deploy_environment(settings),
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    for entry in config.get("deployments") or []:
        logger.info("deployed %s on pool %s", entry["name"], entry["work_pool"]["name"])


def deploy(
    settings: Settings, project_dir: Path = PROJECT_DIR, prefect_file: str = PREFECT_FILE
) -> dict[str, str]:
    """Work pool, deployments, automations, in that order (the triggers need the deployments).

    Returns:
        What happened to each notification automation (see `apply_automations`).
    """
    ensure_work_pool(settings)
    ensure_work_pool(settings, settings.prefect.tuning_pool)
    deploy_all(settings, project_dir, prefect_file)
    return apply_automations(settings)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help="folder holding prefect.yaml")
    parser.add_argument(
        "--automations-only", action="store_true", help="apply the automations, skip pool and deployments"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings()
    if args.automations_only:
        apply_automations(settings)
    else:
        deploy(settings, args.project_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
