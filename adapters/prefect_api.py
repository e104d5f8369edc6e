"""Which Prefect server this package's clients, flows and events talk to; deployments and their runs on it."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTimestamp,
    WorkerFilter,
    WorkerFilterStatus,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, Log, State, StateType, TaskRun, WorkerStatus
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Cancelling, Scheduled

from adapters.prefect_url import api_url
from reggaeton import names
from reggaeton.settings import Settings


@contextlib.contextmanager
def prefect_api_at(url: str) -> Iterator[None]:
    """Point every Prefect client and event in this block at ``url``."""
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


@contextlib.contextmanager
def prefect_api(settings: Settings, *, keep_configured: bool = False) -> Iterator[None]:
    """Point every Prefect client in this block at a real server, never at a throw-away one.

    Without an API URL Prefect starts an ephemeral server, and whatever is sent to it is lost.
    ``keep_configured`` is as in :func:`api_url`.
    """
    with prefect_api_at(api_url(settings, keep_configured=keep_configured)):
        yield


# How long a decider waits for another one to finish, and how long its hold lasts if it dies holding it
# (Prefect renews the lease while the holder lives).
DECISION_LOCK_WAIT_S = 300.0
DECISION_LOCK_LEASE_S = 60.0


@contextlib.contextmanager
def decision_lock(wait_s: float = DECISION_LOCK_WAIT_S) -> Iterator[None]:
    """Hold the one decision slot (a Prefect global concurrency limit) on the configured Prefect API.

    Every decider (the gate, the operator's promote and rollback, the upgrade's adoption) numbers,
    signs and applies its decision inside this block, so two never take the same sequence number and
    the champion alias never moves back to an older decision.
    """
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(names.DECISION_LOCK)
        except ObjectNotFound:
            # Another decider may create it meanwhile.
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=names.DECISION_LOCK, limit=1)
                )
    with concurrency(
        names.DECISION_LOCK,
        occupy=1,
        timeout_seconds=wait_s,
        lease_duration=DECISION_LOCK_LEASE_S,
        strict=True,
    ):
        yield


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


def deployment_runs(
    client: SyncPrefectClient,
    deployment_id: UUID,
    *states: StateType,
    since: datetime | None = None,
    until: datetime | None = None,
    sort: FlowRunSort = FlowRunSort.EXPECTED_START_TIME_DESC,
    limit: int = 200,
) -> list[FlowRun]:
    """Flow runs of one deployment, optionally only in ``states`` and expected to start in [since, until].

    The one query of "runs of a deployment since T": the watchdog, the demo and the command line use it.
    """
    window = FlowRunFilterExpectedStartTime(after_=since, before_=until) if since or until else None
    return list(
        client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))) if states else None,
                expected_start_time=window,
            ),
            sort=sort,
            limit=limit,
        )
    )


# The message Prefect's orchestration puts on a run it cancelled for its deployment's concurrency limit.
CONCURRENCY_CANCEL_MESSAGE = "Deployment concurrency limit reached."
# The states in which a run holds its deployment's concurrency slot.
SLOT_STATES = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING)


def slot_holders(client: SyncPrefectClient, deployment_id: UUID) -> list[FlowRun]:
    """The runs of a deployment that hold one of its concurrency slots now."""
    return deployment_runs(client, deployment_id, *SLOT_STATES)


HANDED_BACK_MESSAGE = "Handed back by the stack's shutdown while it was being submitted."
WORKER_NAME_LABEL = "prefect.worker.name"  # the label a Prefect worker gives the runs it submits


def hand_back_pending_runs(work_pool: str, worker: str | None = None) -> list[str]:
    """Put the runs of a work pool still Pending back to Scheduled, due now (Prefect API set by the caller).

    For a shutdown, right after the worker stopped: a run it was submitting would otherwise stay Pending
    and hold its deployment's concurrency slot until the stranded-run rule crashes it. Leaving Pending
    frees the slot; the next worker submits the run again.

    Args:
        work_pool: The pool of the stopped worker.
        worker: The stopped worker's name, when other workers may serve the pool: only the runs it
            labelled as its own, or not yet labelled by any worker, are handed back. None: every Pending
            run of the pool (the embedded stack's one worker).

    Returns:
        The names of the runs handed back.
    """
    handed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
            limit=200,
        )
        for run in runs:
            if worker is not None and run.labels.get(WORKER_NAME_LABEL, worker) != worker:
                continue
            back: State[Any] = Scheduled(scheduled_time=datetime.now(UTC), message=HANDED_BACK_MESSAGE)
            # Forced: the orchestration would refuse Pending -> Scheduled; nothing else moves the run
            # now that its worker is gone.
            client.set_flow_run_state(run.id, back, force=True)
            handed.append(run.name)
    return handed


def submit_run(deployment: str, parameters: dict[str, Any], idempotency_key: str) -> UUID:
    """Schedule a run of ``deployment`` ("<flow>/<deployment>") now, without waiting; its id.

    Inside a flow or task the run shows as its subflow. A second call with the same key returns the
    same run (a retried task does not submit twice).
    """
    run = run_deployment(deployment, parameters=parameters, timeout=0, idempotency_key=idempotency_key)
    return cast(FlowRun, run).id


def online_workers(work_pool: str) -> list[str]:
    """The names of the workers of a pool that are online (heartbeat recent); none when it does not exist."""
    online = WorkerFilter(status=WorkerFilterStatus(any_=[WorkerStatus.ONLINE.value]))
    with get_client(sync_client=True) as client:
        try:
            return [worker.name for worker in client.read_workers_for_work_pool(work_pool, online)]
        except PrefectHTTPStatusError as error:
            if error.response.status_code == httpx.codes.NOT_FOUND:
                return []
            raise


def wait_for_runs(run_ids: Sequence[UUID], timeout_s: float, poll_s: float = 2.0) -> dict[UUID, StateType]:
    """Wait until every run is in a final state or ``timeout_s`` passed; return each run's state type."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(run_ids)))
            )
            states = {run.id: run.state for run in runs if run.state is not None}
            done = len(states) == len(run_ids) and all(state.is_final() for state in states.values())
            if done or time.monotonic() >= deadline:
                return {run_id: state.type for run_id, state in states.items()}
            time.sleep(poll_s)


def cancel_runs(run_ids: Sequence[UUID], message: str) -> list[UUID]:
    """Cancel the runs not yet in a final state; return those cancelled.

    A run no worker has started is Cancelled at once; a started one is Cancelling (its worker stops it).
    """
    asked = []
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                continue
            unstarted = state is None or state.type in (StateType.SCHEDULED, StateType.PENDING)
            stop: State[Any] = Cancelled(message=message) if unstarted else Cancelling(message=message)
            client.set_flow_run_state(run_id, stop, force=True)
            asked.append(run_id)
    return asked
