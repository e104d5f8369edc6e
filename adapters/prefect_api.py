"""Which Prefect server this package's clients, flows and events talk to; deployments on it by name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings

from reggaeton.settings import Settings


@contextmanager
def prefect_api(settings: Settings, *, keep_configured: bool = False) -> Iterator[None]:
    """Point every Prefect client in this block at a real server, never at a throw-away one.

    Without an API URL Prefect starts an ephemeral server, and whatever is sent to it is lost.

    Args:
        settings: The settings; their ``prefect_api_url`` is the server used.
        keep_configured: Keep the URL Prefect already has (``PREFECT_API_URL`` from the environment,
            a profile or an enclosing block) and fall back on the settings' only without one: for the
            command-line entry points, which a person may aim at any server. Off for the tools that
            manage the stack the settings describe (deploy, demo, automations).
    """
    url = (PREFECT_API_URL.value() if keep_configured else None) or settings.prefect_api_url
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def find_deployment(client: SyncPrefectClient, name: str) -> UUID | None:
    """The id of the deployment called ``name``, or None when there is none."""
    found = client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
    )
    return found[0].id if found else None
