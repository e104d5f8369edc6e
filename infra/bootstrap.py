"""The stack's one-shot bootstrap job: set up what the services share, deploy, then make the first champion.

``python -m infra.bootstrap``, in order (each step idempotent; every ``up`` runs it again):

1. the prediction log's tables, created or upgraded as their owner (the ``predictions`` role; the API's
   role may only insert and read rows, ``infra/postgres/roles.sql``);
2. MLflow's service accounts and their grants, as MLflow's admin (``infra/accounts.py``);
3. on a registry that predates signed decisions, its champion signed once ("adopted", the upgrade path);
4. ``python -m flows.deploy`` (pools, deployments, automations), saying where alerts go;
5. only while the registry has no champion, the ``train-and-promote`` deployment on the worker, waited
   for: the first champion is trained and promoted by the path every retraining takes.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from typing import cast

from adapters.prefect_url import export_api_url
from infra.services import RECEIVER_URL, TRAIN_TIMEOUT_S
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


def migrate_prediction_log(settings: Settings) -> None:
    """Create or upgrade the prediction log's tables with the settings' (owner) URL."""
    from adapters.prediction_log import create_tables, make_engine

    engine = make_engine(settings.prediction_log_url)
    try:
        create_tables(engine)
    finally:
        engine.dispose()
    logger.info("prediction log tables ready")


def adopt_champion(settings: Settings) -> None:
    """Sign the champion once when the registry predates signed decisions (see adapters.decisions)."""
    from adapters import decisions, keys, registry
    from adapters.prefect_api import decision_lock

    with decision_lock():
        record = decisions.adopt_unsigned_champion(
            registry.connect(settings),
            keys.signing_key(settings),
            settings.mlflow.model_name,
            "bootstrap (upgrade)",
        )
    if record is not None:
        logger.warning(
            "adopted champion version %s: the registry predates signed decisions, so it was signed once "
            "(decision %d); from now on only signed decisions make a champion",
            record.version,
            record.sequence,
        )


def announce_alerts(settings: Settings) -> None:
    """Say where notifications go: a configured webhook, or loudly, the stack's own receiver."""
    url = settings.alert_webhook_url
    if url == RECEIVER_URL:
        logger.warning(
            "ALERTS GO TO THE STACK'S OWN RECEIVER (WEBHOOK_URL is not set): read them with "
            "`docker-compose logs receiver`; set WEBHOOK_URL (a Slack incoming webhook or any "
            "Slack-compatible URL) in .env to receive them, then `docker-compose up -d` again"
        )
    else:
        logger.info("alerts go to the configured webhook (%s)", url.split("://", 1)[-1].split("/", 1)[0])


def main(argv: list[str] | None = None) -> int:
    """Set up, deploy, then train the first champion unless one exists."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployment", default=names.TRAIN_DEPLOYMENT, help="the training deployment to run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    # Every Prefect call goes to the stack's server, never to an ephemeral one.
    export_api_url(settings)
    from infra.accounts import ensure_accounts, service_passwords

    migrate_prediction_log(settings)
    ensure_accounts(settings, service_passwords(settings))
    adopt_champion(settings)
    subprocess.run([sys.executable, "-m", "flows.deploy"], check=True)
    announce_alerts(settings)
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
