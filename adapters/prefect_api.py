"""Which Prefect server this package's clients, flows and events talk to; deployments on it by name."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTimestamp,
)
from prefect.client.schemas.objects import Log, TaskRun
from prefect.client.schemas.sorting import LogSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from reggaeton.settings import Settings


def api_url(settings: Settings, *, keep_configured: bool = False) -> str:
    """The Prefect API URL to talk to: the only function that chooses it.

    Args:
        settings: The settings; their ``prefect_api_url`` is the stack's server.
        keep_configured: Prefer the URL Prefect already has (``PREFECT_API_URL`` from the environment,
            a profile or an enclosing block) and fall back on the settings' only without one: for the
            command-line entry points, which a person may aim at any server. Off for the tools that
            manage the stack the settings describe (deploy, demo, automations, the monitor's events).
    """
    return (PREFECT_API_URL.value() if keep_configured else None) or settings.prefect_api_url


@contextmanager
def prefect_api_at(url: str) -> Iterator[None]:
    """Point every Prefect client and event in this block at ``url``."""
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


@contextmanager
def prefect_api(settings: Settings, *, keep_configured: bool = False) -> Iterator[None]:
    """Point every Prefect client in this block at a real server, never at a throw-away one.

    Without an API URL Prefect starts an ephemeral server, and whatever is sent to it is lost.
    ``keep_configured`` is as in :func:`api_url`.
    """
    with prefect_api_at(api_url(settings, keep_configured=keep_configured)):
        yield


def export_api_url(settings: Settings, *, only_explicit: bool = False) -> None:
    """Set ``PREFECT_API_URL`` for this process and its children unless the environment already has one.

    Args:
        settings: The settings.
        only_explicit: Export only a URL set in the settings (``REGGAETON_PREFECT__API_URL``), not the
            local default: for the API server, which sends events only where it was told to.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    if only_explicit and not settings.prefect.api_url:
        return
    os.environ["PREFECT_API_URL"] = api_url(settings)


def find_deployment(client: SyncPrefectClient, name: str) -> UUID | None:
    """The id of the deployment called ``name``, or None when there is none."""
    found = client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
    )
    return found[0].id if found else None


def task_runs_of(client: SyncPrefectClient, flow_run_id: UUID) -> list[TaskRun]:
    """The task runs of one flow run."""
    return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def logs_of(
    client: SyncPrefectClient, flow_run_id: UUID, since: datetime | None, limit: int = 200
) -> list[Log]:
    """A flow run's INFO-and-above log lines from ``since`` on (inclusive), oldest first."""
    log_filter = LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
        level=LogFilterLevel(ge_=logging.INFO),
        timestamp=LogFilterTimestamp(after_=since) if since is not None else None,
    )
    return client.read_logs(log_filter=log_filter, limit=limit, sort=LogSort.TIMESTAMP_ASC)
