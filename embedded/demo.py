"""`reggaeton demo` (`make demo`): the whole loop once on this machine, then a summary.

Starts the stack (or reuses it), deploys, trains the first champion through the `train-and-promote`
deployment when there is none, drives the traffic simulator (stable, then drifted traffic with late
labels), runs the monitor, and waits until the automation's retrain has decided and the API serves
what the gate chose. The stack stays up; `reggaeton down` stops it.

``reggaeton demo --policy shadow`` shows the live path: the drift retrain goes under live evaluation
instead of into production; the API shadow-scores it; more drifted traffic brings live labels; the
live-gate deployment then decides on them, and the summary shows both evidences. A worker running under
another policy is restarted first (its flows read the policy from their environment).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun

from adapters import registry
from adapters.prefect_api import deployment_runs, find_deployment, prefect_api
from embedded import stack, views
from embedded.manual import deployment_id, run_when_free, wait_for_final, wait_until
from embedded.receiver import read_alerts
from embedded.views import VersionInfo
from flows.deploy import deploy
from monitoring import store
from monitoring.policy import Status
from reggaeton import names
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)


# A scheduled monitor run may hold the slot when the demo wants its own: it waits this long for it.
MONITOR_WAIT_S = 300.0

DRIFT_TO_SERVED = "drift detected -> decision served"
LIVE_DECIDED = "under live evaluation -> live decision"
# Under the live policies: labelled drift songs sent per round, and rounds at most before the demo stops
# waiting for the live gate (each round's labels bring ~90 positives).
LIVE_SONGS = 1000
LIVE_ROUNDS = 3
# Issue 13's target for the retrain loop: the monitor's run on drifted traffic to the API serving the
# gate's decision (the new champion, or the old one kept).
DRIFT_TO_SERVED_TARGET_S = 60.0
TARGETS = {DRIFT_TO_SERVED: DRIFT_TO_SERVED_TARGET_S}


@dataclass
class DemoReport:
    """What the demo observed, for the summary."""

    started_at: datetime
    before: VersionInfo | None = None
    after: VersionInfo | None = None
    challenger: VersionInfo | None = None
    served_before: str | None = None
    served_after: str | None = None
    retrain_state: str | None = None
    policy: str = "offline"
    live: dict[str, Any] | None = None  # the live gate's last outcome (policy shadow or canary)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# --- registry -------------------------------------------------------------------------------------------
def version_info(client: MlflowClient, settings: Settings, version: str) -> VersionInfo:
    """Metrics (on its logged model) and decision (tags written by the gate) recorded on a version."""
    found = client.get_model_version(settings.mlflow.model_name, version)
    return views.version_info(found, registry.version_metrics(client, found))


def champion_version(client: MlflowClient, settings: Settings) -> str | None:
    """The version the champion alias points at, or None (also while MLflow answers with an error)."""
    try:
        champion = registry.get_alias(client, settings.mlflow.model_name, names.CHAMPION)
    except MlflowException:
        return None
    return str(champion.version) if champion is not None else None


def latest_version(client: MlflowClient, settings: Settings) -> str | None:
    """The newest registered version, or None."""
    newest = client.search_model_versions(
        f"name='{settings.mlflow.model_name}'", max_results=1, order_by=["version_number DESC"]
    )
    return str(newest[0].version) if newest else None


# --- API ------------------------------------------------------------------------------------------------
def served_version(settings: Settings) -> str | None:
    """The model version the API serves, or None when it has none (or is down)."""
    try:
        response = httpx.get(f"{stack.api_url(settings)}/ready", timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    version = response.json().get("model_version")
    return str(version) if version is not None else None


# --- Prefect --------------------------------------------------------------------------------------------
def run_deployment_and_wait(settings: Settings, name: str, timeout_s: float) -> FlowRun:
    """Create a flow run of a deployment (the worker picks it up) and wait for a final state."""
    with prefect_api(settings), get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id(settings, name))
    logger.info("started %s flow run %s", name, flow_run.name)
    return wait_for_final(settings, flow_run.id, timeout_s)


def runs_since(settings: Settings, name: str, since: datetime) -> list[FlowRun]:
    """Runs of a deployment expected to start between `since` and now (not future schedules), newest first."""
    with prefect_api(settings), get_client(sync_client=True) as client:
        found = find_deployment(client, name)
        if found is None:
            return []
        return deployment_runs(client, found, since=since, until=datetime.now(UTC) + timedelta(minutes=1))


# --- traffic --------------------------------------------------------------------------------------------
def simulate(
    settings: Settings,
    scenario: str,
    timeout_s: float = 600,
    count: int | None = None,
    seed: int | None = None,
) -> None:
    """Drive the API with the traffic simulator (`python -m monitoring.simulate`)."""
    command = [sys.executable, "-m", "monitoring.simulate", "--scenario", scenario]
    if count is not None:
        command += ["--count", str(count)]
    if seed is not None:
        command += ["--seed", str(seed)]
    logger.info("traffic: %s", " ".join(command[1:]))
    subprocess.run(command, env=stack.stack_environment(settings), check=True, timeout=timeout_s)


# --- the demo -------------------------------------------------------------------------------------------
def ensure_champion(settings: Settings, client: MlflowClient, report: DemoReport) -> str:
    """The current champion, training the first one through the deployment when there is none."""
    current = champion_version(client, settings)
    if current is None:
        began = time.monotonic()
        run = run_deployment_and_wait(settings, names.TRAIN_DEPLOYMENT, timeout_s=900)
        report.timings["first champion"] = time.monotonic() - began
        if run.state is None or not run.state.is_completed():
            raise RuntimeError(f"the first training run ended {run.state}: see the Prefect UI")
        current = wait_until("a champion alias", lambda: champion_version(client, settings), 60)
    wait_until(f"the API serving version {current}", lambda: served_version(settings) == current or None, 180)
    return current


class DemoError(RuntimeError):
    """The demo cannot show the loop on this stack (the message says why and what to do)."""


def no_retrain_reason(settings: Settings, champion: str, since: datetime) -> str | None:
    """Why the drift monitor run (ended after ``since``) asked no retrain of ``champion``; None if it did.

    On a stack where an earlier demo ran, the champion is its drift retrain: trained on the drifted songs,
    it is not degraded by them, and nothing retrains (or the last request is within its debounce window).
    """
    engine = store.connect(settings.monitoring_results_url)
    try:
        state = store.read_state(engine, settings.mlflow.model_name, champion)
    finally:
        engine.dispose()
    fresh = (
        f"To see the whole loop again, run `reggaeton down` and start from an empty state folder (remove "
        f"{settings.state_path}, or set REGGAETON_STATE_DIR to another)."
    )
    if state is None or state.status != Status.DEGRADED:
        return (
            f"the champion (version {champion}) is not degraded on the drifted traffic, so no retrain "
            f"follows (where a demo ran before, the champion is its retrain, trained on these songs). {fresh}"
        )
    requested = state.retrain_requested_at
    if requested is None or requested < since:
        return (
            f"the champion (version {champion}) is degraded, but its retrain was requested at "
            f"{requested:%Y-%m-%d %H:%M} UTC and the next waits for the debounce window. {fresh}"
            if requested is not None
            else f"the champion (version {champion}) is degraded but no retrain was requested. {fresh}"
        )
    return None


def run_loop(settings: Settings, client: MlflowClient, report: DemoReport) -> None:
    """Stable then drifted traffic, the monitor, and the retrain the automation starts."""
    simulate(settings, "stable")
    run_when_free(settings, names.MONITOR_DEPLOYMENT, MONITOR_WAIT_S)
    simulate(settings, "drift")
    loop_began = datetime.now(UTC)
    began = time.monotonic()
    run_when_free(settings, names.MONITOR_DEPLOYMENT, MONITOR_WAIT_S)

    def first_retrain() -> FlowRun | None:
        # Not the weekly schedule's run, should the demo meet one (Monday 03:00 UTC).
        runs = [
            run for run in runs_since(settings, names.TRAIN_DEPLOYMENT, loop_began) if not run.auto_scheduled
        ]
        return runs[-1] if runs else None

    champion_now = champion_version(client, settings)
    why_not = no_retrain_reason(settings, champion_now, loop_began) if champion_now else None
    if why_not is not None:
        raise DemoError(why_not)
    retrain = wait_until("the retrain the degraded event triggers", first_retrain, timeout_s=180)
    final = wait_for_final(settings, retrain.id, timeout_s=900)
    report.retrain_state = final.state.name if final.state else None
    champion = champion_version(client, settings)
    newest = latest_version(client, settings)
    if newest is not None and newest != (report.before.version if report.before else None):
        report.challenger = version_info(client, settings, newest)
    if champion is not None:
        report.after = version_info(client, settings, champion)
        wait_until(
            f"the API serving version {champion}", lambda: served_version(settings) == champion or None, 180
        )
    report.served_after = served_version(settings)
    report.timings[DRIFT_TO_SERVED] = time.monotonic() - began


def run_live(settings: Settings, client: MlflowClient, report: DemoReport) -> None:
    """Under a live policy: drifted traffic with labels through the API until the live gate decides."""
    from adapters import live_state

    found = live_state.challenger(client, settings.mlflow.model_name)
    if found is None or not found[1].under_evaluation:
        return  # the offline gate rejected the retrain: nothing under live evaluation
    version = found[1].version
    began = time.monotonic()
    wait_until(
        f"the API shadowing version {version}", lambda: shadowed_version(settings) == version or None, 120
    )
    for round_ in range(LIVE_ROUNDS):
        simulate(settings, "drift", count=LIVE_SONGS, seed=100 + round_)
        run_when_free(settings, names.LIVE_GATE_DEPLOYMENT, MONITOR_WAIT_S)
        state = live_state.read(client.get_model_version(settings.mlflow.model_name, version))
        if not state.under_evaluation:
            break
    decided = version_info(client, settings, version)
    report.challenger = decided
    report.live = (decided.detail or {}).get("live") if decided.detail else None
    champion = champion_version(client, settings)
    if champion is not None:
        report.after = version_info(client, settings, champion)
        wait_until(
            f"the API serving version {champion}", lambda: served_version(settings) == champion or None, 180
        )
    report.served_after = served_version(settings)
    report.timings[LIVE_DECIDED] = time.monotonic() - began


def shadowed_version(settings: Settings) -> str | None:
    """The challenger version the API shadow-scores, or None (read from its /metrics)."""
    try:
        text = httpx.get(f"{stack.api_url(settings)}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("reggaeton_challenger_info{") and line.endswith(" 1.0"):
            return line.split('model_version="', 1)[1].split('"', 1)[0]
    return None


def summary(settings: Settings, report: DemoReport) -> str:
    """The text printed at the end of the demo."""
    lines = ["", "=" * 72, "reggaeton loop: summary", "=" * 72]

    lines.append(views.held_out_line("champion before", report.before))
    lines.append(views.held_out_line("challenger", report.challenger))
    lines.append(views.held_out_line("champion after", report.after))
    if report.challenger is not None:
        lines.extend(views.decision_lines(report.challenger))
    lines.append(f"promotion policy: {report.policy}")
    if report.live is not None:
        lines.extend(views.live_lines(report.live))
    lines.append(f"retrain run: {report.retrain_state}")
    lines.append(f"API served: {report.served_before} -> {report.served_after}")
    lines.append(f"alerts received ({len(report.alerts)}), also in {settings.alerts_path}:")
    lines.extend(f"  {alert['received_at']}  {alert['subject']}" for alert in report.alerts)
    lines.extend(
        views.timing_line(name, seconds, TARGETS.get(name)) for name, seconds in report.timings.items()
    )
    lines += [
        f"Prefect UI:  {stack.prefect_ui_url(settings)}",
        f"MLflow UI:   {stack.mlflow_url(settings)}",
        f"API docs:    {stack.api_url(settings)}/docs",
        "The stack is still running: `reggaeton down` (or `make down`) stops it.",
    ]
    return "\n".join(lines) + "\n"


def run_demo(settings: Settings) -> DemoReport:
    """Everything `make demo` does, returning what it saw."""
    report = DemoReport(started_at=datetime.now(UTC), policy=settings.live.policy)
    began = time.monotonic()
    settings = stack.stack_settings(settings)
    worker = stack.read_record(settings, "worker")
    if worker is not None and worker.is_running() and (worker.policy or "offline") != settings.live.policy:
        logger.info(
            "restarting the worker: it runs under policy %s, the demo under %s",
            worker.policy,
            settings.live.policy,
        )
        stack.down(settings, ["worker"])
    for name, what in stack.up(settings).items():
        logger.info("%s: %s", name, what)
    deploy(settings)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    report.before = version_info(client, settings, ensure_champion(settings, client, report))
    report.served_before = served_version(settings)
    run_loop(settings, client, report)
    if settings.live.policy != "offline":
        run_live(settings, client, report)
    report.alerts = [
        alert
        for alert in read_alerts(settings.alerts_path)
        if alert["received_at"] >= report.started_at.isoformat()
    ]
    report.timings["total"] = time.monotonic() - began
    return report


def main() -> int:
    """Command line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings()
    report = run_demo(settings)
    sys.stdout.write(summary(stack.stack_settings(settings), report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
