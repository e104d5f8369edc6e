"""The loop never stops silently, on one real stack shared by these tests (Prefect server, worker,
watchdog, alert receiver), with short bounds: a monitor every 15 s, Pending for 45 s = stranded (three
scheduled runs cancelled meanwhile),
the watchdog looking every 2 s.

Stand-in flows at the deployments' entrypoints: a flow-run process whose import stalls stays Pending
(the worker has submitted it, its engine has not started), which is the window a dead worker strands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events import Event as PrefectEvent
from prefect.events.clients import get_events_client
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

from adapters.prefect_api import (
    CONCURRENCY_CANCEL_MESSAGE,
    HANDED_BACK_MESSAGE,
    flow_run_resource,
    prefect_api,
)
from embedded import demo, stack
from embedded.manual import MANUAL_TAG, SlotTaken, run_when_free
from embedded.receiver import read_alerts
from flows.automations import FLOW_RUN_HEARTBEAT, FLOW_RUN_SUBMITTING
from flows.deploy import deploy
from monitoring import watchdog
from reggaeton.names import MONITOR_DEPLOYMENT, TRAIN_DEPLOYMENT
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITOR_EVERY_S = 15
STRANDED_AFTER_S = 45
# MLflow too, though the stand-in flows never call it: `reggaeton monitor` checks it answers before it
# starts a run, as it does on a real stack.
SERVICES = ["prefect-server", "mlflow", "receiver", "worker", "watchdog"]

# A marker file beside the flow, holding a number of seconds: the next import of the module sleeps
# that long (in the flow-run process, before its engine moves the run to Running) and removes it.
STALL = """
import time
from pathlib import Path

_stall = Path(__file__).with_name("stall-{name}")
if _stall.exists():
    import os

    _seconds = float(_stall.read_text())
    _stall.with_suffix(".pid").write_text(str(os.getpid()))
    _stall.unlink()
    time.sleep(_seconds)
"""
MONITOR_FLOW = (
    STALL.format(name="monitor")
    + """
from prefect import flow


@flow(name="monitor")
def monitor() -> str:
    return "ok"
"""
)
RETRAIN_FLOW = (
    STALL.format(name="retrain")
    + """
from prefect import flow
from prefect.runtime import flow_run


@flow(name="train-and-promote")
def train_and_promote(request_id: str | None = None) -> str:
    served = request_id or flow_run.get_id()
    with Path(__file__).with_name("completions.txt").open("a") as handle:
        handle.write(f"{served}\\n")  # the stand-in of "one version registered per request"
    return served
"""
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    """The shared stack and the stand-in project it runs; stopped (by PID) whatever happens."""
    root = tmp_path_factory.mktemp("guard")
    project = root / "project"
    (project / "flows").mkdir(parents=True)
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    # Only the deployments this stand-in project has flows for (no tuning pool is served here).
    stood_in = (MONITOR_DEPLOYMENT, TRAIN_DEPLOYMENT)
    config["deployments"] = [entry for entry in config["deployments"] if entry["name"] in stood_in]
    for entry in config["deployments"]:
        if entry["name"] == MONITOR_DEPLOYMENT:
            entry["schedules"] = [{"interval": MONITOR_EVERY_S, "active": True}]
    (project / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (project / "flows" / "monitor.py").write_text(MONITOR_FLOW)
    (project / "flows" / "promote.py").write_text(RETRAIN_FLOW)
    prefect_port, receiver_port, mlflow_port = _free_ports(3)
    settings = Settings(
        state_dir=root / "state",
        mlflow={"port": mlflow_port},
        prefect={
            "port": prefect_port,
            "alert_receiver_port": receiver_port,
            "stranded_after_s": STRANDED_AFTER_S,
            "debounce_s": 0,
            "zombie_after_beats": 2,  # the stand-in flows finish in seconds: no run is silent that long
        },
        watchdog={"every_s": 2, "monitor_intervals": 3, "cancelled_threshold": 2, "cancelled_window_s": 40},
    )
    try:
        stack.up(settings, ["prefect-server", "mlflow", "receiver"])
        deploy(settings, project_dir=project)
        stack.up(settings, ["worker", "watchdog"])
        yield settings, project
    finally:
        stack.down(settings)


# --- helpers -------------------------------------------------------------------------------------------
def _runs(settings: Settings, deployment: str) -> list[FlowRun]:
    with prefect_api(settings), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
        )
    return sorted(runs, key=lambda run: run.created or datetime.min.replace(tzinfo=UTC))


def _run(settings: Settings, flow_run_id: UUID) -> FlowRun:
    with prefect_api(settings), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _state(run: FlowRun) -> StateType | None:
    return run.state.type if run.state else None


def _stall(project: Path, name: str, seconds: float) -> Path:
    marker = project / "flows" / f"stall-{name}"
    marker.write_text(str(seconds))
    return marker


def _stalled_pending_run(settings: Settings, deployment: str, marker: Path) -> FlowRun:
    """The run whose import took the stall: Pending once the marker is consumed."""
    demo.wait_until(
        f"a {deployment} run to take the stall", lambda: None if marker.exists() else True, 120, 0.5
    )
    return demo.wait_until(
        f"the stalled {deployment} run, Pending",
        lambda: next((r for r in _runs(settings, deployment) if _state(r) == StateType.PENDING), None),
        timeout_s=30,
        every_s=0.5,
    )


def _sigkill_worker(settings: Settings, marker: Path) -> None:
    """SIGKILL the worker and the flow-run process it was submitting, then start a new worker.

    The flow-run process may lead a session of its own: it is killed by the PID it wrote.
    """
    record = stack.read_record(settings, "worker")
    assert record is not None and record.is_running()
    os.killpg(record.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(marker.with_suffix(".pid").read_text()), signal.SIGKILL)
    # Not `stack.stop`: that would hand the Pending run back, as a clean shutdown does.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(record.pid, 0)
    stack.record_path(settings, "worker").unlink()
    assert stack.up(settings, ["worker"]) == {"worker": "started"}


def _wait_state(settings: Settings, run: FlowRun, wanted: StateType, timeout_s: float) -> FlowRun:
    seen: set[StateType | None] = set()

    def probe() -> FlowRun | None:
        current = _run(settings, run.id)
        seen.add(_state(current))
        return current if _state(current) == wanted else None

    try:
        return demo.wait_until(f"run {run.name} to be {wanted.value}", probe, timeout_s, every_s=1.0)
    except TimeoutError as exc:
        raise AssertionError(f"states of {run.name} seen: {seen}") from exc


def _next_completed_monitor(settings: Settings, after: datetime, timeout_s: float) -> FlowRun:
    """A scheduled monitor run planned after `after` that completed."""
    return demo.wait_until(
        "the next scheduled monitor run to complete",
        lambda: next(
            (
                r
                for r in _runs(settings, MONITOR_DEPLOYMENT)
                if r.auto_scheduled
                and r.expected_start_time is not None
                and r.expected_start_time > after
                and _state(r) == StateType.COMPLETED
            ),
            None,
        ),
        timeout_s=timeout_s,
        every_s=1.0,
    )


def _alerts(settings: Settings, subject_start: str) -> list[dict[str, Any]]:
    return [a for a in read_alerts(settings.alerts_path) if a["subject"].startswith(subject_start)]


def _wait_alert(settings: Settings, subject_start: str, timeout_s: float) -> dict[str, Any]:
    return demo.wait_until(
        f"an alert {subject_start!r}",
        lambda: next(iter(_alerts(settings, subject_start)), None),
        timeout_s=timeout_s,
        every_s=1.0,
    )


def _emit_for_run(settings: Settings, name: str, run: FlowRun) -> None:
    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(
                PrefectEvent(event=name, resource={"prefect.resource.id": flow_run_resource(run.id)})
            )

    with prefect_api(settings):
        asyncio.run(send())


def _reggaeton(settings: Settings, *args: str) -> subprocess.Popen[str]:
    """The operator's command line on this stack (started; the caller waits for it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGGAETON_") and k != "PREFECT_API_URL"}
    env.update(stack.settings_environment(settings))
    command = [str(Path(sys.executable).with_name("reggaeton")), *args]
    return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=PIPE, stderr=PIPE, text=True)


def _refused_start(settings: Settings, command: str) -> subprocess.Popen[str]:
    """A manual run while another run holds the slot (started: it runs while the test goes on)."""
    return _reggaeton(settings, command, "--wait-s", "1")


def _refused_check(settings: Settings, cli: subprocess.Popen[str], deployment: str, holder: FlowRun) -> None:
    """Nothing ran, the one last line names the holder, exit 1."""
    out, err = cli.communicate(timeout=120)
    # Log lines (its wait) may come first; the reason is the one last line.
    reason = err.strip().splitlines()[-1]
    assert cli.returncode == 1 and reason.startswith(f"reggaeton monitor: {deployment} did not run"), err
    assert f"held by run {holder.name} (" in reason and str(holder.id) in reason, reason
    assert "Traceback" not in out + err
    # Never a run created and silently cancelled: the command started none (its runs are tagged manual).
    created = [r.name for r in _runs(settings, deployment) if MANUAL_TAG in r.tags]
    assert not created, created


# --- the tests -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_completed_run_is_never_flipped_to_crashed(guarded: tuple[Settings, Path]) -> None:
    """Late events after completion open the stranded and zombie rules' windows; neither may crash it."""
    settings, _ = guarded
    done = _next_completed_monitor(settings, datetime.min.replace(tzinfo=UTC), timeout_s=240)
    _emit_for_run(settings, FLOW_RUN_HEARTBEAT, done)  # a heartbeat delivered after the final state
    _emit_for_run(settings, FLOW_RUN_SUBMITTING, done)  # a late (replayed) Pending event

    # Until both rules have fired on the late events (stranded after 45 s, zombie after 2 heartbeats of
    # 30 s: Prefect's shortest) and the server refused their Crashed: the rules are not merely asleep,
    # and the run stays Completed all along.
    def both_refused() -> bool | None:
        _check_completed(settings, done)
        return True if {"stranded", "silent"} <= _refused_actions(settings, done) else None

    try:
        demo.wait_until("both rules to fire", both_refused, timeout_s=settings.zombie_after_s + 60, every_s=2)
    except TimeoutError as exc:
        raise AssertionError(f"refused so far: {_refused_actions(settings, done)}") from exc
    _check_completed(settings, done)


def _refused_actions(settings: Settings, run: FlowRun) -> set[str]:
    """Which of our crash rules had an action on `run` refused ("stranded", "silent")."""
    target = flow_run_resource(run.id)
    wanted = EventFilter(
        event=EventNameFilter(name=["prefect.automation.action.failed"]),
        any_resource=EventAnyResourceFilter(id=[target]),
    )
    with prefect_api(settings), get_client(sync_client=True) as client:
        events = client.read_events(wanted, limit=50).events
    found = set()
    for event in events:
        if any(related.id == target for related in event.related):
            name = event.resource.get("prefect.resource.name", "")
            found |= {word for word in ("stranded", "silent") if word in name}
    return found


def _check_completed(settings: Settings, run: FlowRun) -> None:
    state = _run(settings, run.id).state
    assert state is not None and state.type == StateType.COMPLETED, state


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_killed_while_monitor_pending_the_run_is_crashed_and_monitoring_resumes(
    guarded: tuple[Settings, Path],
) -> None:
    settings, project = guarded
    marker = _stall(project, "monitor", 120)
    stranded = _stalled_pending_run(settings, MONITOR_DEPLOYMENT, marker)
    # While it holds the slot, the schedule's next runs are cancelled by the limit: counted, notified.
    # (Runs of a 15 s schedule may also overlap now and then: only what follows the stall counts.)
    held_since = stranded.state.timestamp if stranded.state else datetime.now(UTC)

    def cancelled_since() -> int:
        return sum(
            1
            for r in _runs(settings, MONITOR_DEPLOYMENT)
            if r.state
            and r.state.timestamp > held_since
            and (r.state.message or "").startswith(CONCURRENCY_CANCEL_MESSAGE)
        )

    # An operator's `reggaeton monitor` meanwhile: it does not run, and says which run holds the slot.
    refused = _refused_start(settings, "monitor")
    demo.wait_until(
        "two monitor runs cancelled by the limit",
        lambda: True if cancelled_since() >= 2 else None,
        timeout_s=5 * MONITOR_EVERY_S,
    )
    demo.wait_until(
        "the cancellations alert naming the run that holds the slot",
        lambda: next(
            (a for a in _alerts(settings, "[reggaeton] runs cancelled") if str(stranded.id) in a["body"]),
            None,
        ),
        timeout_s=30,
    )

    _refused_check(settings, refused, MONITOR_DEPLOYMENT, stranded)

    _sigkill_worker(settings, marker)
    killed_at = datetime.now(UTC)
    # Started now, it waits for the slot (freed when the stranded run is crashed), then runs.
    waiting = _reggaeton(settings, "monitor", "--wait-s", str(STRANDED_AFTER_S + 90))
    crashed = _wait_state(settings, stranded, StateType.CRASHED, timeout_s=STRANDED_AFTER_S + 90)
    assert crashed.state is not None and "Pending for" in (crashed.state.message or ""), crashed.state
    _next_completed_monitor(settings, killed_at, timeout_s=120)
    out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, (out, err)
    assert "waiting for the slot, held by run " + stranded.name in err, err
    assert re.search(r"monitor run \S+: Completed", out), out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_killed_while_retrain_pending_it_is_crashed_and_rerun_once(
    guarded: tuple[Settings, Path],
) -> None:
    settings, project = guarded
    marker = _stall(project, "retrain", 120)
    with prefect_api(settings), get_client(sync_client=True) as client:
        first = client.create_flow_run_from_deployment(demo.deployment_id(settings, TRAIN_DEPLOYMENT))
    assert _stalled_pending_run(settings, TRAIN_DEPLOYMENT, marker).id == first.id
    # A manual retrain meanwhile (what `reggaeton retrain` runs; its command line is tested above with
    # `monitor`): in-process, so it looks at once, while the run is surely still Pending.
    with pytest.raises(SlotTaken, match=f"held by run {first.name} .*{first.id}"):
        run_when_free(settings, TRAIN_DEPLOYMENT, wait_s=0)

    _sigkill_worker(settings, marker)
    _wait_state(settings, first, StateType.CRASHED, timeout_s=STRANDED_AFTER_S + 90)
    rerun = demo.wait_until(
        "the rerun of the crashed retrain",
        lambda: next(
            (r for r in _runs(settings, TRAIN_DEPLOYMENT) if r.id != first.id and not r.auto_scheduled), None
        ),
        timeout_s=60,
    )
    assert rerun.parameters == {"request_id": str(first.id)}  # the same retrain request
    _wait_state(settings, rerun, StateType.COMPLETED, timeout_s=120)
    time.sleep(5)  # a further rerun would show up by now
    # Neither the manual attempt nor anything else added a run.
    assert [r.id for r in _runs(settings, TRAIN_DEPLOYMENT) if not r.auto_scheduled] == [first.id, rerun.id]
    assert (project / "flows" / "completions.txt").read_text().split() == [str(first.id)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_monitoring_silent_for_three_intervals_is_notified_once_then_recovers(
    guarded: tuple[Settings, Path],
) -> None:
    settings, _ = guarded
    stale, recovered = "[reggaeton] monitoring is stale", "[reggaeton] monitoring recovered"
    # A stranded run above may have made monitoring stale for a while: start from a recovered state.
    before = demo.wait_until(
        "monitoring not stale",
        lambda: n if (n := len(_alerts(settings, stale))) == len(_alerts(settings, recovered)) else None,
        timeout_s=90,
    )
    assert stack.stop("worker", settings) == "stopped"
    demo.wait_until(
        "the stale alert",
        lambda: True if len(_alerts(settings, stale)) > before else None,
        timeout_s=3 * MONITOR_EVERY_S + 60,
    )
    time.sleep(10)  # the watchdog looks every 2 s: still one alert
    assert len(_alerts(settings, stale)) == before + 1
    assert stack.up(settings, ["worker"]) == {"worker": "started"}
    # A monitor run Running when the worker stopped died with it and holds the deployment's one slot
    # until it is crashed as silent (the zombie automation, or the watchdog's backstop): then the next
    # scheduled run completes.
    demo.wait_until(
        "the recovery alert",
        lambda: True if len(_alerts(settings, recovered)) > before else None,
        timeout_s=watchdog.silent_after(settings).total_seconds() + 2 * MONITOR_EVERY_S + 30,
    )
    time.sleep(6)
    assert len(_alerts(settings, stale)) == before + 1
    assert len(_alerts(settings, recovered)) == before + 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_down_during_a_submission_then_up_monitoring_goes_on(guarded: tuple[Settings, Path]) -> None:
    """`make down` while the worker submits a run: it is handed back, not stranded; after `make up` the
    next scheduled run completes."""
    settings, project = guarded
    marker = _stall(project, "monitor", 60)
    submitted = _stalled_pending_run(settings, MONITOR_DEPLOYMENT, marker)
    stack.down(settings)
    stack.up(settings, SERVICES)
    restarted_at = datetime.now(UTC)
    # Back in the schedule, it is submitted again: it completes, or, when another due run of the
    # backlog took the slot first, the limit cancels it. Never Pending for ever, never Crashed.
    final = demo.wait_for_final(settings, submitted.id, timeout_s=120)
    assert final.state is not None and (
        final.state.is_completed() or (final.state.message or "").startswith(CONCURRENCY_CANCEL_MESSAGE)
    ), final.state
    with prefect_api(settings), get_client(sync_client=True) as client:
        history = client.read_flow_run_states(submitted.id)
    handed = [state for state in history if state.message == HANDED_BACK_MESSAGE]
    assert [state.type for state in handed] == [StateType.SCHEDULED], [(s.name, s.message) for s in history]
    _next_completed_monitor(settings, restarted_at, timeout_s=120)
