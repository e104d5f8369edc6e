"""The watchdog's decisions and the stranded-run rule, without a server (the loop tests run them live),
and its crash of a silent Running run on the session's Prefect server."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.events import Event as PrefectEvent
from prefect.events.clients import get_events_client
from prefect.states import Completed, Running

from adapters.prefect_api import HEARTBEAT, flow_run_event, flow_run_resource, prefect_api_at, state_events
from embedded.manual import wait_until
from flows import automations
from infra import healthcheck
from infra.services import SERVICES
from monitoring import watchdog
from reggaeton.names import Event
from reggaeton.settings import Settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
FIVE_MIN = timedelta(minutes=5)


def _run(state: StateType, entered: datetime, message: str | None = None) -> FlowRun:
    return FlowRun(id=uuid4(), flow_id=uuid4(), state=State(type=state, timestamp=entered, message=message))


def test_stale_after_the_given_number_of_intervals_from_the_last_completion() -> None:
    since = NOW - timedelta(days=1)
    assert not watchdog.is_stale(NOW - 3 * FIVE_MIN, since, FIVE_MIN, 3, NOW)
    assert watchdog.is_stale(NOW - 3 * FIVE_MIN - timedelta(seconds=1), since, FIVE_MIN, 3, NOW)


def test_never_completed_counts_from_the_deployment_creation() -> None:
    assert not watchdog.is_stale(None, NOW - 2 * FIVE_MIN, FIVE_MIN, 3, NOW)
    assert watchdog.is_stale(None, NOW - 4 * FIVE_MIN, FIVE_MIN, 3, NOW)
    # A completion older than a re-created deployment does not make it stale at once.
    assert not watchdog.is_stale(NOW - timedelta(days=9), NOW - FIVE_MIN, FIVE_MIN, 3, NOW)


def test_only_a_run_still_pending_past_the_bound_is_stranded() -> None:
    after = timedelta(seconds=120)
    assert watchdog.is_stranded(_run(StateType.PENDING, NOW - timedelta(seconds=121)), NOW, after)
    assert not watchdog.is_stranded(_run(StateType.PENDING, NOW - timedelta(seconds=60)), NOW, after)
    for moved_on in (StateType.RUNNING, StateType.COMPLETED, StateType.CRASHED):
        assert not watchdog.is_stranded(_run(moved_on, NOW - timedelta(hours=1)), NOW, after)


def test_the_backstop_acts_after_the_automation() -> None:
    settings = Settings(prefect={"stranded_after_s": 120}, watchdog={"every_s": 30})
    assert watchdog.stranded_after(settings) == timedelta(seconds=180)
    quick = Settings(prefect={"stranded_after_s": 20}, watchdog={"every_s": 2})
    assert watchdog.stranded_after(quick) == timedelta(seconds=50)


def test_only_a_run_running_since_before_the_bound_may_be_silent() -> None:
    after = timedelta(seconds=120)
    assert watchdog.running_since_before(_run(StateType.RUNNING, NOW - timedelta(seconds=121)), NOW, after)
    assert not watchdog.running_since_before(_run(StateType.RUNNING, NOW - timedelta(seconds=60)), NOW, after)
    for other in (StateType.PENDING, StateType.COMPLETED, StateType.CRASHED, StateType.PAUSED):
        assert not watchdog.running_since_before(_run(other, NOW - timedelta(hours=1)), NOW, after)


def test_the_silent_run_backstop_acts_after_the_zombie_automation() -> None:
    settings = Settings(prefect={"heartbeat_s": 30, "zombie_after_beats": 3}, watchdog={"every_s": 30})
    assert watchdog.silent_after(settings) == timedelta(seconds=90 + 60)
    quick = Settings(prefect={"heartbeat_s": 30, "zombie_after_beats": 2}, watchdog={"every_s": 2})
    assert watchdog.silent_after(quick) == timedelta(seconds=60 + 30)


def test_a_running_run_with_no_heartbeat_is_crashed_and_a_beating_one_is_not(prefect_api_url: str) -> None:
    """On a real server: of three runs Running since before the bound, the one with no heartbeat within it
    is crashed (unforced, with the watchdog's message); one that beat lately and a Completed one are left.

    The bound is a parameter: 8 s here (the heartbeat's way into the server's event store fits in it)
    instead of the stack's minutes."""
    pool = f"silent-{uuid4().hex[:8]}"
    after = timedelta(seconds=8)
    with prefect_api_at(prefect_api_url), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name(f"flow-{pool}")
        deployment = client.create_deployment(flow_id, pool, work_pool_name=pool, entrypoint="f.py:f")
        runs = {
            who: client.create_flow_run_from_deployment(deployment) for who in ("dead", "beating", "done")
        }
        for run in runs.values():
            client.set_flow_run_state(run.id, Running())
        client.set_flow_run_state(runs["done"].id, Completed())
        time.sleep(after.total_seconds() + 1)

        async def beat() -> None:
            async with get_events_client() as events:
                await events.emit(
                    PrefectEvent(
                        event=flow_run_event(HEARTBEAT),
                        resource={"prefect.resource.id": flow_run_resource(runs["beating"].id)},
                    )
                )

        asyncio.run(beat())
        began = datetime.now(UTC)
        wait_until(
            "the heartbeat, recorded",
            lambda: state_events(client, {runs["beating"].id}, HEARTBEAT, began - after) or None,
            timeout_s=30,
            every_s=0.2,
        )
        crashed = watchdog.crash_silent_runs(client, deployment, datetime.now(UTC), after)

        assert [run.id for run in crashed] == [runs["dead"].id]
        states = {who: client.read_flow_run(run.id).state for who, run in runs.items()}
    assert states["dead"] is not None and states["dead"].type == StateType.CRASHED
    assert states["dead"].message == watchdog.SILENT_MESSAGE.format(after_s=8)
    assert states["beating"] is not None and states["beating"].type == StateType.RUNNING
    assert states["done"] is not None and states["done"].type == StateType.COMPLETED


def test_only_cancellations_by_the_concurrency_limit_within_the_window_count() -> None:
    window = timedelta(minutes=15)
    limit = watchdog.CONCURRENCY_CANCEL_MESSAGE
    runs = [
        _run(StateType.CANCELLED, NOW - timedelta(minutes=1), limit),
        _run(StateType.CANCELLED, NOW - timedelta(minutes=14), limit),
        _run(StateType.CANCELLED, NOW - timedelta(minutes=16), limit),  # too old
        _run(StateType.CANCELLED, NOW - timedelta(minutes=1), "Cancelled by a person"),
        _run(StateType.COMPLETED, NOW - timedelta(minutes=1), limit),
    ]
    assert watchdog.cancelled_by_limit(runs, NOW, window) == runs[:2]


def test_memory_survives_a_restart(tmp_path: Path) -> None:
    memory = watchdog.Memory.load(tmp_path / "watchdog.json")
    memory.stale.add("monitor")
    memory.cancelled_reported["monitor"] = NOW.isoformat()
    memory.save()
    again = watchdog.Memory.load(tmp_path / "watchdog.json")
    assert again.stale == {"monitor"} and again.cancelled_reported == {"monitor": NOW.isoformat()}


def test_healthy_while_its_looks_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's health: a successful look renews the liveness file for three looks."""
    settings = Settings(state_dir=tmp_path, watchdog={"every_s": 30})
    assert not watchdog.healthy(settings)  # never looked
    watchdog.renew_health(settings, now=1_000.0)
    assert watchdog.healthy(settings, now=1_090.0)  # three looks
    assert not watchdog.healthy(settings, now=1_091.0)
    # What the container runs (infra/services.py), reading the same file without importing the watchdog.
    (check,) = (s.healthcheck for s in SERVICES if s.name == "watchdog")
    assert check is not None and check.test[:4] == ("python", "-m", "infra.healthcheck", "--alive")
    watchdog.renew_health(settings)
    assert healthcheck.main(["--alive", str(watchdog.alive_path(settings))]) == 0
    watchdog.renew_health(settings, now=time.time() - 91)  # its last look four looks ago
    assert healthcheck.main(["--alive", str(watchdog.alive_path(settings))]) == 1
    # `--healthy` for a person at a shell, with the settings of its process.
    watchdog.renew_health(settings)
    monkeypatch.setenv("REGGAETON_STATE_DIR", str(tmp_path))
    assert watchdog.main(["--healthy"]) == 0
    monkeypatch.setenv("REGGAETON_STATE_DIR", str(tmp_path / "elsewhere"))
    assert watchdog.main(["--healthy"]) == 1


def test_the_containers_check_reads_the_file_the_watchdog_renews() -> None:
    (service,) = (s for s in SERVICES if s.name == "watchdog")
    assert service.healthcheck is not None
    checked = Path(service.healthcheck.test[-1])
    state = Settings(state_dir=service.environment["REGGAETON_STATE_DIR"])
    assert watchdog.alive_path(state) == checked
    assert str(checked.parent) in service.volumes.values()  # kept on the watchdog's volume


def test_stranded_rule_crashes_pending_runs_without_force() -> None:
    rule = automations.stranded_automation(Settings(prefect={"stranded_after_s": 45}))
    trigger = rule.trigger
    # The worker's Pending state is named Submitting, and the event carries the name.
    assert trigger.after == {automations.FLOW_RUN_PENDING, automations.FLOW_RUN_SUBMITTING}  # type: ignore[union-attr]
    assert automations.FLOW_RUN_RUNNING in trigger.expect  # type: ignore[union-attr]
    # A run a stopping worker handed back to the schedule leaves Pending: not stranded.
    assert automations.FLOW_RUN_SCHEDULED in trigger.expect  # type: ignore[union-attr]
    assert trigger.expect >= automations.FLOW_RUN_FINAL  # type: ignore[union-attr]
    assert trigger.within == timedelta(seconds=45)  # type: ignore[union-attr]
    [action] = rule.actions
    # Forced, the server would let a late event turn a finished run into a Crashed one.
    assert action.state == StateType.CRASHED and action.force is False  # type: ignore[union-attr]


def test_every_watchdog_event_is_notified() -> None:
    covered = set().union(*(n.events for n in automations.watchdog_notices()))
    assert covered == {
        Event.MONITOR_STALE,
        Event.MONITOR_RECOVERED,
        Event.RETRAIN_STALE,
        Event.RETRAIN_RECOVERED,
        Event.RUNS_CANCELLED,
    }
