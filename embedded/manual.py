"""An operator's run of a deployment now (`reggaeton monitor`, `retrain`, and with ``--stack compose``
`gate`, `promote`, `rollback`, `train`): it never vanishes.

The loop's deployments allow one run at a time and cancel a new run while another holds the slot
(``CANCEL_NEW``). A manual run waits for the slot (up to a bound), then runs; when the slot stays taken
it does not run and :class:`SlotTaken` says, in one line, which run holds the slot and in what state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun

from adapters.prefect_api import CONCURRENCY_CANCEL_MESSAGE, find_deployment, prefect_api, slot_holders
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Called on every poll of a flow run with the poll's Prefect client and the run as read (live progress).
Watch = Callable[[SyncPrefectClient, FlowRun], None]
MANUAL_TAG = "manual"  # on the runs an operator started from the command line


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 2.0) -> T:
    """Poll `probe` until it returns something other than None; bounded in time.

    Raises:
        TimeoutError: naming what was awaited.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def deployment_id(settings: Settings, name: str) -> UUID:
    """The id of a deployment by its name."""
    with prefect_api(settings), get_client(sync_client=True) as client:
        found = find_deployment(client, name)
    if found is None:
        raise LookupError(f"deployment {name!r} not found: run `python -m flows.deploy`")
    return found


def wait_for_final(
    settings: Settings, flow_run_id: UUID, timeout_s: float, watch: Watch | None = None
) -> FlowRun:
    """Wait for a flow run to reach a final state (polled every second when watched, else every 3 s)."""

    def final() -> FlowRun | None:
        with prefect_api(settings), get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            if watch is not None:
                watch(client, run)
        return run if run.state is not None and run.state.is_final() else None

    every_s = 3.0 if watch is None else 1.0
    return wait_until(f"flow run {flow_run_id}", final, timeout_s, every_s=every_s)


class SlotTaken(RuntimeError):
    """The deployment's one slot stayed taken: the run was not started (its message is one line)."""


def describe_holder(run: FlowRun, now: datetime | None = None) -> str:
    """``run <name> (<state> for <n> s, id <id>)``: what an operator needs to find it in the UI."""
    now = now or datetime.now(UTC)
    state = run.state
    since = f" for {(now - state.timestamp).total_seconds():.0f} s" if state is not None else ""
    return f"run {run.name} ({run.state_name}{since}, id {run.id})"


def slot_taken_message(name: str, holder: FlowRun, waited_s: float, stranded_after_s: int) -> str:
    """Why a manual run of ``name`` did not start, in one line."""
    return (
        f"{name} did not run: its one concurrency slot is held by {describe_holder(holder)}; "
        f"waited {waited_s:.0f} s (--wait-s to wait longer; a run Pending longer than "
        f"{stranded_after_s} s is crashed by the stranded-run rule, which frees the slot)"
    )


def _holders(settings: Settings, deployment: UUID) -> list[FlowRun]:
    with prefect_api(settings), get_client(sync_client=True) as client:
        return slot_holders(client, deployment)


def _cancelled_by_limit(run: FlowRun) -> bool:
    state = run.state
    return (
        state is not None
        and state.is_cancelled()
        and (state.message or "").startswith(CONCURRENCY_CANCEL_MESSAGE)
    )


def wait_for_slot(settings: Settings, name: str, deployment: UUID, deadline: float, began: float) -> None:
    """Return when no run holds the deployment's slot; raise :class:`SlotTaken` at the deadline."""
    announced: set[UUID] = set()
    while holders := _holders(settings, deployment):
        if time.monotonic() >= deadline:
            raise SlotTaken(
                slot_taken_message(
                    name, holders[0], time.monotonic() - began, settings.prefect.stranded_after_s
                )
            )
        if holders[0].id not in announced:
            announced.add(holders[0].id)
            logger.warning("%s: waiting for the slot, held by %s", name, describe_holder(holders[0]))
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def run_when_free(
    settings: Settings,
    name: str,
    wait_s: float,
    timeout_s: float = 900,
    watch: Watch | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> FlowRun:
    """Run deployment ``name`` now, waiting up to ``wait_s`` for its slot; returns the run's final state.

    ``parameters`` are the flow run's (over the deployment's own); a run started again after a
    scheduled run took the slot gets the same.

    Raises:
        SlotTaken: the slot stayed taken for ``wait_s`` (nothing ran).
        TimeoutError: the run did not finish within ``timeout_s``.
    """
    deployment = deployment_id(settings, name)
    began = time.monotonic()
    deadline = began + wait_s
    while True:
        wait_for_slot(settings, name, deployment, deadline, began)
        with prefect_api(settings), get_client(sync_client=True) as client:
            created = client.create_flow_run_from_deployment(
                deployment, parameters=dict(parameters or {}), tags=[MANUAL_TAG]
            )
        logger.info("%s: flow run %s started", name, created.name)
        final = wait_for_final(settings, created.id, timeout_s, watch)
        if not _cancelled_by_limit(final):
            return final
        # A scheduled run took the slot between our look and our run: wait for it, and try again.
        logger.warning("%s: run %s was cancelled by the concurrency limit", name, final.name)
        if time.monotonic() >= deadline and not _holders(settings, deployment):
            raise SlotTaken(f"{name} did not run: run {final.name} was cancelled by the concurrency limit")
