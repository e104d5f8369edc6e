"""Which Prefect server this package's clients, flows and events talk to; deployments and their runs on it."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
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
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Cancelling, Scheduled

from adapters.prefect_url import api_url
from reggaeton import names
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

# Prefect names a flow run's events "prefect.flow-run.<state name>" (a worker's Pending is "Submitting")
# and their resource "prefect.flow-run.<run id>": the automations and the hand-back's wait match on them.
_FLOW_RUN = "prefect.flow-run"
HEARTBEAT = "heartbeat"  # not a state: the event a running flow run sends every heartbeat interval


def flow_run_event(state_name: str) -> str:
    """The event a flow run's state change to ``state_name`` emits (e.g. ``Crashed``, ``heartbeat``)."""
    return f"{_FLOW_RUN}.{state_name}"


def flow_run_resource(run_id: UUID | str) -> str:
    """The resource id of a flow run in events (``*`` for any flow run)."""
    return f"{_FLOW_RUN}.{run_id}"


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


class DecisionLockTimeout(TimeoutError):
    """Another decider held the decision slot for the whole wait."""


def _take_decision_slot(client: SyncPrefectClient, wait_s: float, lease_s: float) -> UUID:
    """The lease of the one decision slot, waiting (as the server's Retry-After says) up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[names.DECISION_LOCK], slots=1, mode="concurrency", lease_duration=lease_s
            )
            return UUID(str(response.json()["lease_id"]))
        except httpx.HTTPStatusError as exc:
            left = deadline - time.monotonic()
            if exc.response.status_code != httpx.codes.LOCKED:
                raise
            if left <= 0:
                raise DecisionLockTimeout(
                    f"another decision held {names.DECISION_LOCK!r} for {wait_s:.0f} s"
                ) from exc
            retry_after = float(exc.response.headers.get("Retry-After") or 1.0)
            time.sleep(min(max(retry_after, 0.2), left))


@contextlib.contextmanager
def decision_lock(
    wait_s: float = DECISION_LOCK_WAIT_S, lease_s: float = DECISION_LOCK_LEASE_S
) -> Iterator[None]:
    """Hold the one decision slot (a Prefect global concurrency limit) on the configured Prefect API.

    Every decider (the gate, the operator's promote and rollback, the upgrade's adoption) numbers,
    signs and applies its decision inside this block, so two never take the same sequence number and
    the champion alias never moves back to an older decision. The slot is a lease renewed while the
    block runs; a decider that dies frees it when the lease ends. Taken with this call's own client
    (the API of the current settings): Prefect's process-wide concurrency service keeps the first API
    it talked to, so a process that changes stacks (a test session) had it try a server long gone.

    Raises:
        DecisionLockTimeout: another decider held it for ``wait_s``.
    """
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(names.DECISION_LOCK)
        except ObjectNotFound:
            # Another decider may create it meanwhile.
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=names.DECISION_LOCK, limit=1)
                )
        lease = _take_decision_slot(client, wait_s, lease_s)
        done = threading.Event()
        context = contextvars.copy_context()  # the renewing thread talks to the same API

        def renew() -> None:
            with get_client(sync_client=True) as renewer:
                while not done.wait(lease_s / 3):
                    try:
                        renewer.renew_concurrency_lease(lease, lease_duration=lease_s)
                    except Exception as exc:  # the server is away: the lease may lapse meanwhile
                        logger.warning("could not renew the decision lease: %s", exc)

        renewing = threading.Thread(target=context.run, args=(renew,), name="decision-lease", daemon=True)
        renewing.start()
        try:
            yield
        finally:
            done.set()
            renewing.join()
            with contextlib.suppress(Exception):  # unreleased, it ends with its lease
                client.release_concurrency_slots_with_lease(lease)


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


def hand_back_pending_runs(work_pool: str, worker: str | None = None, settle_s: float = 0.0) -> list[str]:
    """Put the runs of a work pool still Pending back to Scheduled, due now (Prefect API set by the caller).

    For a shutdown, right after the worker stopped: a run it was submitting would otherwise stay Pending
    and hold its deployment's concurrency slot until the stranded-run rule crashes it. Leaving Pending
    frees the slot; the next worker submits the run again.

    Args:
        work_pool: The pool of the stopped worker.
        worker: The stopped worker's name, when other workers may serve the pool: only the runs it
            labelled as its own, or not yet labelled by any worker, are handed back. None: every Pending
            run of the pool (the embedded stack's one worker).
        settle_s: For a caller about to stop the server too (the embedded stack's ``down``): wait up to
            this long until the server has taken in each hand-back's state event. Its automations read
            the events off an in-memory queue that dies with the server: a hand-back the stranded-run
            rule never saw leaves that rule's clock running from the first submission, and after the
            next start it crashes the run it finds submitted again. 0: do not wait.

    Returns:
        The names of the runs handed back.
    """
    handed: dict[UUID, str] = {}
    since = datetime.now(UTC)
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
            handed[run.id] = run.name
        if handed and settle_s > 0:
            unseen = _await_state_events(client, set(handed), "Scheduled", since, settle_s)
            if unseen:
                logger.warning(
                    "the server had not recorded the hand-back of %s after %.0f s",
                    ", ".join(sorted(handed[run_id] for run_id in unseen)),
                    settle_s,
                )
    return list(handed.values())


def _await_state_events(
    client: SyncPrefectClient, run_ids: set[UUID], state_name: str, since: datetime, timeout_s: float
) -> set[UUID]:
    """Wait until the server's events hold each run's ``state_name`` event since ``since``; the runs unseen.

    An event is readable once the server's event persister wrote it, in batches seconds apart; its
    automations take each event off the same stream as it arrives, so by then they have had it too.
    """
    deadline = time.monotonic() + timeout_s
    unseen = set(run_ids)
    while unseen:
        unseen -= state_events(client, unseen, state_name, since)
        if not unseen or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    return unseen


def state_events(
    client: SyncPrefectClient, run_ids: set[UUID], state_name: str, since: datetime
) -> set[UUID]:
    """Which of the runs have a ``flow_run_event(state_name)`` event (or ``HEARTBEAT``) since ``since``."""
    wanted = EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(name=[flow_run_event(state_name)]),
        resource=EventResourceFilter(id=[flow_run_resource(run_id) for run_id in run_ids]),
    )
    seen = {event.resource.id for event in client.read_events(wanted, limit=len(run_ids) * 4).events}
    return {run_id for run_id in run_ids if flow_run_resource(run_id) in seen}


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
