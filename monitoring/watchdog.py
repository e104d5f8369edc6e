"""`python -m monitoring.watchdog`: the loop never stops silently.

A small process beside the Prefect server, outside every deployment and work pool (a check that ran on
the worker would die with it). Every ``watchdog.every_s`` it looks at the Prefect API and:

- **stranded runs**: a run of the loop's deployments still ``Pending`` well past
  ``prefect.stranded_after_s`` is marked ``Crashed``. The proactive automation of the same rule
  (``flows/automations.py``) acts first; this is its backstop, as Prefect's proactive triggers are
  reported to fire erratically. Crashing frees the deployment's concurrency slot.
- **silent runs**: a run of the loop's deployments ``Running`` with no heartbeat well past the zombie
  bound (``Settings.zombie_after_s``: its process died, with its worker or the machine) is marked
  ``Crashed``, the backstop of the zombie automation; it held the deployment's one slot, so every
  scheduled run after it was cancelled by the limit until something crashed it.
- **dead-man's switch**: no ``monitor`` run completed for ``watchdog.monitor_intervals`` of its schedule
  interval emits ``reggaeton.monitor.stale`` once; the next completed run emits
  ``reggaeton.monitor.recovered`` once. The same for ``train-and-promote`` and its weekly schedule.
- **cancelled runs**: runs cancelled by a deployment concurrency limit are counted; from
  ``watchdog.cancelled_threshold`` of them within ``watchdog.cancelled_window_s`` it emits
  ``reggaeton.runs.cancelled`` (once per window), naming the run that holds the slot.

The events are notified by the automations of ``flows/automations.py``. What it has announced is kept in
``<state>/watchdog.json``, so a restart announces nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse, OrchestrationResult
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events import Event as PrefectEvent
from prefect.events.clients import get_events_client
from prefect.states import Crashed

from adapters import prefect_events
from adapters.prefect_api import (
    CONCURRENCY_CANCEL_MESSAGE,
    HEARTBEAT,
    deployment_runs,
    prefect_api,
    slot_holders,
    state_events,
)
from reggaeton import heartbeat
from reggaeton.names import MONITOR_DEPLOYMENT, TRAIN_DEPLOYMENT, WATCHDOG_ALIVE_FILE, Event
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

STRANDED_MESSAGE = "Pending for {after_s} s: its worker died while submitting it (watchdog)."
SILENT_MESSAGE = "Running with no heartbeat for {after_s} s: its process is gone (watchdog)."


@dataclass(frozen=True)
class Watched:
    """A scheduled deployment whose silence is an alert."""

    deployment: str
    intervals: float  # silent for this many schedule intervals = stale
    stale_event: str
    recovered_event: str


def watched(settings: Settings) -> tuple[Watched, ...]:
    """The deployments the dead-man's switch watches."""
    return (
        Watched(
            MONITOR_DEPLOYMENT,
            settings.watchdog.monitor_intervals,
            Event.MONITOR_STALE,
            Event.MONITOR_RECOVERED,
        ),
        Watched(
            TRAIN_DEPLOYMENT,
            settings.watchdog.retrain_intervals,
            Event.RETRAIN_STALE,
            Event.RETRAIN_RECOVERED,
        ),
    )


# --- pure decisions ------------------------------------------------------------------------------------
def is_stale(
    last_completed: datetime | None, since: datetime, interval: timedelta, intervals: float, now: datetime
) -> bool:
    """No completion for `intervals` schedule intervals, counted from the last one (or from `since`)."""
    reference = max(last_completed, since) if last_completed else since
    return now - reference > interval * intervals


def _after_the_rule(bound_s: float, settings: Settings) -> timedelta:
    """An automation's bound plus two looks (at least 30 s), so that the automation, when it fires, acts
    first and the watchdog is only its backstop."""
    return timedelta(seconds=bound_s + max(2 * settings.watchdog.every_s, 30.0))


def stranded_after(settings: Settings) -> timedelta:
    """How long a run may stay Pending before the watchdog crashes it (the stranded rule's bound)."""
    return _after_the_rule(settings.prefect.stranded_after_s, settings)


def silent_after(settings: Settings) -> timedelta:
    """How long a Running run may go without a heartbeat before the watchdog crashes it (the zombie
    rule's bound)."""
    return _after_the_rule(settings.zombie_after_s, settings)


def is_stranded(run: FlowRun, now: datetime, after: timedelta) -> bool:
    """Still Pending, and for longer than `after`."""
    state = run.state
    return state is not None and state.type == StateType.PENDING and now - state.timestamp > after


def running_since_before(run: FlowRun, now: datetime, after: timedelta) -> bool:
    """Running, and since longer than `after`: silent unless a heartbeat came within `after`."""
    state = run.state
    return state is not None and state.type == StateType.RUNNING and now - state.timestamp > after


def cancelled_by_limit(runs: Iterable[FlowRun], now: datetime, window: timedelta) -> list[FlowRun]:
    """The runs the deployment concurrency limit cancelled within the window."""
    return [
        run
        for run in runs
        if run.state is not None
        and run.state.type == StateType.CANCELLED
        and (run.state.message or "").startswith(CONCURRENCY_CANCEL_MESSAGE)
        and now - run.state.timestamp <= window
    ]


# --- what it has announced -----------------------------------------------------------------------------
@dataclass
class Memory:
    """Announced stale deployments and the last cancellation report per deployment (persisted)."""

    path: Path
    stale: set[str] = field(default_factory=set)
    cancelled_reported: dict[str, str] = field(default_factory=dict)  # deployment -> ISO time

    @classmethod
    def load(cls, path: Path) -> Memory:
        """The memory file, or an empty memory."""
        if not path.is_file():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(path, set(data.get("stale", [])), dict(data.get("cancelled_reported", {})))

    def save(self) -> None:
        """Write it atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"stale": sorted(self.stale), "cancelled_reported": self.cancelled_reported})
        )
        tmp.replace(self.path)


# --- the Prefect side ----------------------------------------------------------------------------------
def _interval(deployment: DeploymentResponse) -> timedelta | None:
    for entry in deployment.schedules or []:
        if entry.active and isinstance(entry.schedule, IntervalSchedule):
            return entry.schedule.interval
    return None


def _runs(client: SyncPrefectClient, deployment_id: UUID, *types: StateType, **more: Any) -> list[FlowRun]:
    return deployment_runs(client, deployment_id, *types, sort=FlowRunSort.END_TIME_DESC, **more)


def crash_silent_runs(
    client: SyncPrefectClient, deployment_id: UUID, now: datetime, after: timedelta
) -> list[FlowRun]:
    """Mark Crashed the deployment's runs Running for longer than `after` with no heartbeat within it.

    Not forced: a run that finished meanwhile stays finished (the server refuses to leave a final state
    unforced). Crashing a Running run releases its deployment concurrency slot at once.
    """
    crashed = []
    for run in _runs(client, deployment_id, StateType.RUNNING):
        if not running_since_before(run, now, after):
            continue
        if state_events(client, {run.id}, HEARTBEAT, since=now - after):
            continue  # it beat lately: alive
        message = SILENT_MESSAGE.format(after_s=int(after.total_seconds()))
        result: OrchestrationResult[Any] = client.set_flow_run_state(run.id, Crashed(message=message))
        logger.warning("silent run %s: %s", run.name, result.status.value)
        crashed.append(run)
    return crashed


def emit(settings: Settings, name: str, deployment: str, payload: dict[str, Any]) -> None:
    """Send one event to the Prefect server and wait until it has left."""
    resource = prefect_events.deployment_resource(deployment)

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(PrefectEvent(event=name, resource=resource, payload=payload))

    with prefect_api(settings):
        asyncio.run(send())
    logger.warning("%s %s %s", name, deployment, payload)


class Watchdog:
    """One look at a time (`check`); `run` looks forever."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.memory = Memory.load(settings.state_path / "watchdog.json")

    def check(self, now: datetime | None = None) -> list[str]:
        """Look once. Returns the events emitted and the runs crashed, for the log and the tests."""
        now = now or datetime.now(UTC)
        done: list[str] = []
        with prefect_api(self.settings), get_client(sync_client=True) as client:
            deployments = {
                d.name: d
                for d in client.read_deployments(
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=[MONITOR_DEPLOYMENT, TRAIN_DEPLOYMENT])
                    )
                )
            }
            for deployment in deployments.values():
                done += self._crash_stranded(client, deployment, now)
                silent = crash_silent_runs(client, deployment.id, now, silent_after(self.settings))
                done += [f"crashed {run.id}" for run in silent]
                done += self._report_cancelled(client, deployment, now)
            for rule in watched(self.settings):
                if (found := deployments.get(rule.deployment)) is not None:
                    done += self._dead_mans_switch(client, found, rule, now)
        self.memory.save()
        renew_health(self.settings)
        return done

    def _crash_stranded(
        self, client: SyncPrefectClient, deployment: DeploymentResponse, now: datetime
    ) -> list[str]:
        after = stranded_after(self.settings)
        crashed = []
        for run in _runs(client, deployment.id, StateType.PENDING):
            if not is_stranded(run, now, after):
                continue
            # Not forced: a run that finished meanwhile is not overwritten by this (a run that went Running
            # in the milliseconds since the read is: the server allows Running -> Crashed).
            result: OrchestrationResult[Any] = client.set_flow_run_state(
                run.id,
                Crashed(message=STRANDED_MESSAGE.format(after_s=self.settings.prefect.stranded_after_s)),
            )
            logger.warning("stranded run %s of %s: %s", run.name, deployment.name, result.status.value)
            crashed.append(f"crashed {run.id}")
        return crashed

    def _report_cancelled(
        self, client: SyncPrefectClient, deployment: DeploymentResponse, now: datetime
    ) -> list[str]:
        window = timedelta(seconds=self.settings.watchdog.cancelled_window_s)
        recent = _runs(client, deployment.id, StateType.CANCELLED, since=now - 2 * window)
        cancelled = cancelled_by_limit(recent, now, window)
        last = self.memory.cancelled_reported.get(deployment.name)
        if len(cancelled) < self.settings.watchdog.cancelled_threshold:
            return []
        if last is not None and now - datetime.fromisoformat(last) < window:
            return []
        holders = slot_holders(client, deployment.id)
        payload = {
            "deployment": deployment.name,
            "cancelled": len(cancelled),
            "window_s": int(window.total_seconds()),
            "runs": [run.name for run in cancelled][:10],
            "slot_held_by": [f"{run.name} ({run.state_name}, {run.id})" for run in holders],
        }
        emit(self.settings, Event.RUNS_CANCELLED, deployment.name, payload)
        self.memory.cancelled_reported[deployment.name] = now.isoformat()
        return [Event.RUNS_CANCELLED]

    def _dead_mans_switch(
        self, client: SyncPrefectClient, deployment: DeploymentResponse, rule: Watched, now: datetime
    ) -> list[str]:
        interval = _interval(deployment)
        if interval is None:  # not scheduled (paused): its silence is no news
            return []
        completed = _runs(client, deployment.id, StateType.COMPLETED)
        last = completed[0].end_time if completed else None
        since = deployment.created or now
        stale = is_stale(last, since, interval, rule.intervals, now)
        announced = rule.deployment in self.memory.stale
        payload = {
            "deployment": rule.deployment,
            "last_completed": last.isoformat() if last else None,
            "interval_s": int(interval.total_seconds()),
            "stale_after_s": int(interval.total_seconds() * rule.intervals),
        }
        if stale and not announced:
            emit(self.settings, rule.stale_event, rule.deployment, payload)
            self.memory.stale.add(rule.deployment)
            return [rule.stale_event]
        if not stale and announced:
            emit(self.settings, rule.recovered_event, rule.deployment, payload)
            self.memory.stale.discard(rule.deployment)
            return [rule.recovered_event]
        return []

    def run(self) -> None:
        """Look every `watchdog.every_s` until interrupted; a failed look is logged and retried."""
        logger.info(
            "watchdog on %s, every %.0f s", self.settings.prefect_api_url, self.settings.watchdog.every_s
        )
        while True:
            try:
                for what in self.check():
                    logger.info("watchdog: %s", what)
            except Exception:
                logger.exception(
                    "watchdog: the look failed (Prefect server down?); next in %.0f s",
                    self.settings.watchdog.every_s,
                )
            time.sleep(self.settings.watchdog.every_s)


def alive_path(settings: Settings) -> Path:
    """Its liveness file (``reggaeton.heartbeat``), renewed after each successful look."""
    return settings.state_path / WATCHDOG_ALIVE_FILE


def renew_health(settings: Settings, now: float | None = None) -> None:
    """A look succeeded: alive for three more looks (and at least a minute)."""
    heartbeat.renew(alive_path(settings), max(3 * settings.watchdog.every_s, 60.0), now)


def healthy(settings: Settings, now: float | None = None) -> bool:
    """Its last successful look is recent (what its container's healthcheck reads, without importing this
    module: ``python -m infra.healthcheck --alive <state>/watchdog.alive``)."""
    return heartbeat.alive(alive_path(settings), now)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="look once and exit")
    parser.add_argument(
        "--healthy", action="store_true", help="exit 0 when a look succeeded lately (container health)"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    if args.healthy:
        return 0 if healthy(settings) else 1
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    watchdog = Watchdog(settings)
    if args.once:
        watchdog.check()
        return 0
    # A container's first process ignores SIGTERM unless it handles it: stop between two looks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        watchdog.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
