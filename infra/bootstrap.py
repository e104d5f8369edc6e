"""The stack's one-shot bootstrap job: deploy the flows and automations, then make the first champion.

``python -m infra.bootstrap`` runs ``python -m flows.deploy`` (pool, deployments, automations; idempotent)
and then, only while the registry has no champion, runs the ``train-and-promote`` deployment on the worker
and waits for it: the first champion is trained and promoted by the same path every retraining takes.
Running it again on a stack that already has a champion only re-deploys.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from typing import cast

from adapters.prefect_url import export_api_url
from infra.services import TRAIN_TIMEOUT_S
from reggaeton import names
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)


def has_champion(settings: Settings) -> bool:
    """Whether the registry already has a champion version."""
    from adapters.registry import connect, get_alias

    return get_alias(connect(settings), settings.mlflow.model_name, names.CHAMPION) is not None


def run_training(
    settings: Settings, deployment: str = names.TRAIN_DEPLOYMENT, timeout_s: float = TRAIN_TIMEOUT_S
) -> None:
    """Run ``deployment`` on the work pool and wait for it.

    Raises:
        RuntimeError: the deployment is missing, or its run did not complete.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from adapters.prefect_api import find_deployment

    with get_client(sync_client=True) as client:
        found = find_deployment(client, deployment)
    if found is None:
        raise RuntimeError(f"no deployment named {deployment!r}: did `python -m flows.deploy` run?")
    logger.info("running %s on the worker", deployment)
    flow_run = cast(FlowRun, run_deployment(found, timeout=timeout_s, poll_interval=5))
    if flow_run.state is None or not flow_run.state.is_completed():
        raise RuntimeError(f"{deployment} run {flow_run.id} ended {flow_run.state}")
    logger.info("%s run %s completed", deployment, flow_run.id)


def main(argv: list[str] | None = None) -> int:
    """Deploy, then train the first champion unless one exists."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployment", default=names.TRAIN_DEPLOYMENT, help="the training deployment to run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    # Every Prefect call goes to the stack's server, never to an ephemeral one.
    export_api_url(settings)
    subprocess.run([sys.executable, "-m", "flows.deploy"], check=True)
    if has_champion(settings):
        logger.info("a champion exists: nothing to train")
        return 0
    run_training(settings, args.deployment)
    if not has_champion(settings):
        logger.error("%s completed but the registry has no champion", args.deployment)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
