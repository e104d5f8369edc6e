"""`reggaeton status`: the URLs, the registry, the last decision and monitoring, the API, what is down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.endpoints import Endpoints, answers, health_urls
from embedded import views
from embedded.views import VersionInfo
from reggaeton import names
from reggaeton.settings import Settings

# /metrics samples shown as the API's queue/spool state: any reggaeton_ sample about the log's queue or
# spool (read generically, so new gauges appear without a change here), but not the counters' creation
# timestamps (prometheus_client's ``*_created`` samples), which say nothing about the log's state.
QUEUE_WORDS = ("queue", "spool")
# The API's gauge of an alias it refuses (serving/metrics.py).
UNAUTHORIZED_GAUGE = "reggaeton_champion_alias_unauthorized"


@dataclass
class StatusReport:
    """What ``status`` found."""

    endpoints: Endpoints
    down: list[str] = field(default_factory=list)
    champion: VersionInfo | None = None
    challenger: VersionInfo | None = None
    last_decision: VersionInfo | None = None
    last_gate: VersionInfo | None = None  # the last gate's, when the last decision was an operator's
    registry_error: str | None = None
    live: str | None = None  # the challenger's live evaluation (policy shadow or canary)
    champion_decision: str | None = None  # the champion's signed decision, verified (or why not)
    monitoring: list[str] = field(default_factory=list)
    api: list[str] = field(default_factory=list)
    security: list[str] = field(default_factory=list)


def _with_metrics(client: Any, version: Any) -> VersionInfo | None:
    """A version as shown, with its own held-out metrics (from its logged model), or None."""
    from adapters import registry

    return None if version is None else views.version_info(version, registry.version_metrics(client, version))


def _registry(settings: Settings, report: StatusReport) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from adapters import registry

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    model = settings.mlflow.model_name
    try:
        champion = registry.get_alias(client, model, names.CHAMPION)
        challenger = registry.get_alias(client, model, names.CHALLENGER)
        versions = client.search_model_versions(f"name='{model}'")
        report.champion = _with_metrics(client, champion)
        report.challenger = _with_metrics(client, challenger)
        report.live = _live_line(settings, challenger)
        report.champion_decision = decision_line(settings, champion)
    except MlflowException as exc:
        report.registry_error = " ".join(str(exc).split())[:200]
        return
    decided = [
        views.version_info(v)
        for v in versions
        if (v.tags or {}).get(names.Tag.DECISION) in ("promoted", "rejected")
        and (v.tags or {}).get(names.Tag.DECIDED_AT)
    ]
    if decided:
        report.last_decision = max(decided, key=lambda info: info.decided_at or "")
        gated = [info for info in decided if info.detail]
        if gated and report.last_decision.detail is None:
            report.last_gate = max(gated, key=lambda info: info.decided_at or "")


def _live_line(settings: Settings, challenger: Any) -> str:
    """The promotion policy and, when a challenger is under live evaluation, its state."""
    from adapters import live_state

    line = f"promotion policy: {settings.live.policy}"
    if challenger is None:
        return line
    state = live_state.read(challenger)
    if state.state == "registered":
        return line
    since = f" since {state.since:%Y-%m-%d %H:%M:%S} UTC" if state.since else ""
    canary = f", canary {state.canary_share:.0%} of requests" if state.state == "canary" else ""
    return f"{line}; challenger {state.version} is {state.state}{since}{canary} (`reggaeton shadow`)"


def decision_line(settings: Settings, champion: Any) -> str:
    """The champion's signed decision, verified with the public keys the API uses (or why it fails)."""
    from adapters import decisions, keys
    from reggaeton.decision_record import RecordError

    if champion is None:
        return "champion decision: none (no champion yet)"
    try:
        record = decisions.authorizing_record(
            champion, keys.verify_keys(settings), settings.mlflow.model_name
        )
    except (RecordError, keys.KeyUnavailable) as exc:
        return (
            f"champion decision: NOT AUTHORIZED: {exc}. The API does not serve version {champion.version}: "
            f"`reggaeton promote --version {champion.version} --reason ...` accepts it, `reggaeton rollback` "
            "goes back"
        )
    _, signature = decisions.record_tags(champion)
    key_id = (signature or "").partition(":")[0]
    return (
        f"champion decision: #{record.sequence} {record.action} by {record.decided_by} at "
        f"{record.decided_at}, signature verified (key {key_id})"
    )


def monitoring_lines(settings: Settings, chunks: int = 6) -> list[str]:
    """The last monitor run and its latest chunk windows, from the local results store."""
    from monitoring import store
    from monitoring.policy import state_line

    url = settings.monitoring_results_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return ["monitoring: no run yet (`reggaeton monitor` runs one now)"]
    engine = store.connect(url)
    try:
        runs = store.read_runs(engine)
        if runs.empty:
            return ["monitoring: no run yet (`reggaeton monitor` runs one now)"]
        last = runs.iloc[-1]
        lines = [
            f"monitoring: last run {_when(last['started_at'])} on version {last['model_version']}: "
            f"{last['rows_read']} rows read, {last['chunks']} chunk(s), alerts: {last['alerts'] or 'none'}"
        ]
        state = store.read_state(engine, str(last["model_name"]), str(last["model_version"]))
        if state is not None:
            lines.append(f"  state: {state_line(state, settings.prefect.debounce_s)}")
        frame = store.read_chunks(engine, str(last["model_version"]), limit=chunks)
    finally:
        engine.dispose()
    estimated, realized = store.estimated_column("roc_auc"), store.realized_column("roc_auc")
    for row in frame.itertuples(index=False):
        values = row._asdict()
        drifted = values.get(store.DRIFTED_FEATURES) or ""
        lines.append(
            f"  chunk {_when(values.get(store.CHUNK_START))} .. {_when(values.get('chunk_end'))}: "
            f"{values.get(store.ROWS)} rows, estimated ROC-AUC {_figure(values.get(estimated))}, "
            f"realized {_figure(values.get(realized))} ({values.get(store.LABELLED)} labelled), "
            f"drifted: {drifted or 'none'}"
        )
    return lines


def _when(value: object) -> str:
    return str(value)[:19] if value is not None else "-"


def _figure(value: object) -> str:
    """A stored metric, or "-" where there is none (NULL or NaN: no estimate, too few labels)."""
    if value is None or value != value:  # NaN is not equal to itself
        return "-"
    return views.number(value)


def _api(endpoints: Endpoints) -> list[str]:
    lines = []
    try:
        with httpx.Client(base_url=endpoints.api, timeout=5) as client:
            model = client.get("/model")
            ready = client.get("/ready")
            metrics = client.get("/metrics")
    except httpx.HTTPError as exc:
        return [f"API {endpoints.api}: {type(exc).__name__}"]
    if model.status_code == 200:
        served = model.json()
        lines.append(f"API serves version {served.get('version')} (scorer: {served.get('scorer')})")
        decision = served.get("decision")
        if decision:
            lines.append(
                f"  its decision: #{decision['sequence']} {decision['action']} by {decision['decided_by']}, "
                f"signature verified by the API (key {decision['key_id']})"
            )
    else:
        lines.append(f"API serves no model ({model.status_code})")
    lines.append(f"API /ready {ready.status_code}: {ready.text.strip()}")
    names_and_lines = [(line.split(" ")[0].split("{")[0], line) for line in metrics.text.splitlines()]
    refused = [
        line.split('version="', 1)[1].split('"', 1)[0]
        for name, line in names_and_lines
        if name == UNAUTHORIZED_GAUGE and 'version="' in line
    ]
    for version in refused:
        lines.append(
            f"  API REFUSES the champion alias (version {version}): no signed decision made it champion"
        )
    samples = [
        line
        for name, line in names_and_lines
        if name.startswith("reggaeton_")
        and any(word in name for word in QUEUE_WORDS)
        and not name.endswith("_created")
    ]
    lines.extend(f"  {sample}" for sample in samples)
    return lines


def _unauthenticated(method: str, url: str) -> str:
    """What a call without credentials gets: "on" (401), "OFF (200)", or why it failed."""
    try:
        response = httpx.request(method, url, json={} if method == "POST" else None, timeout=5)
    except httpx.HTTPError as exc:
        return f"unknown ({type(exc).__name__})"
    return "on" if response.status_code == 401 else f"OFF (an anonymous call got {response.status_code})"


def _webhook(settings: Settings) -> str:
    """Where the stack's notification block sends alerts (read from the Prefect server)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from adapters.prefect_api import prefect_api
    from infra.services import RECEIVER_URL

    try:
        with prefect_api(settings):
            block: Any = CustomWebhookNotificationBlock.load(settings.prefect.notification_block)
            url = str(block.url)
    except Exception as exc:  # not deployed yet, or Prefect refused
        return f"alerts: unknown, no readable notification block ({type(exc).__name__}; `reggaeton deploy`)"
    if url == RECEIVER_URL:
        return (
            "alerts: to the stack's own receiver container (WEBHOOK_URL is not set): "
            "`docker-compose logs receiver` shows them; set WEBHOOK_URL in .env for Slack"
        )
    return f"alerts: webhook configured ({httpx.URL(url).host})"


def security_lines(settings: Settings, endpoints: Endpoints) -> list[str]:
    """Authentication of MLflow and Prefect, and where alerts go."""
    if endpoints.stack != "compose":
        return [
            "security: embedded stack, open on 127.0.0.1 (MLflow, Prefect and the API without "
            f"authentication; see the runbook); alerts to {settings.alert_webhook_url}"
        ]
    mlflow = _unauthenticated("GET", f"{endpoints.mlflow}/api/2.0/mlflow/experiments/search?max_results=1")
    prefect = _unauthenticated("POST", f"{endpoints.prefect_api}/flows/filter")
    return [f"auth: MLflow {mlflow}, Prefect {prefect}", _webhook(settings)]


def collect(settings: Settings, endpoints: Endpoints) -> StatusReport:
    """Ask every service what it knows; a service that is down is listed, not fatal."""
    report = StatusReport(endpoints)
    report.down = [name for name, url in health_urls(endpoints).items() if not answers(url)]
    if endpoints.stack == "local":
        from embedded import stack

        if stack.status(settings).get("worker") == "stopped":
            report.down.append("worker")
    if "mlflow" not in report.down:
        _registry(settings, report)
    if endpoints.stack == "local":
        report.monitoring = monitoring_lines(settings)
    else:
        report.monitoring = [
            "monitoring: results are in the compose stack's database (Prefect UI, monitor runs)"
        ]
    if "api" not in report.down:
        report.api = _api(endpoints)
    report.security = security_lines(settings, endpoints)
    return report


def render(report: StatusReport) -> str:
    """The status as text."""
    found = report.endpoints
    lines = [
        f"stack: {found.stack}",
        f"  Prefect UI  {found.prefect_ui}  ({found.sources.get('prefect_api')})",
        f"  MLflow      {found.mlflow}  ({found.sources.get('mlflow')})",
        f"  API         {found.api}  ({found.sources.get('api')})",
    ]
    if found.receiver:
        lines.append(f"  alerts      {found.receiver}/alerts")
    lines.append(f"services down: {', '.join(report.down) if report.down else 'none'}")
    if report.registry_error:
        lines.append(f"registry: {report.registry_error}")
    elif "mlflow" not in report.down:
        lines.append(views.held_out_line("champion", report.champion))
        if report.champion_decision:
            lines.append(f"  {report.champion_decision}")
        lines.append(views.held_out_line("challenger", report.challenger))
        if report.live:
            lines.append(report.live)
        if report.last_decision is not None:
            lines.append("last decision:")
            lines.extend(f"  {line}" for line in views.decision_lines(report.last_decision))
        else:
            lines.append("last decision: none")
        if report.last_gate is not None:
            lines.append("last gate decision:")
            lines.extend(f"  {line}" for line in views.decision_lines(report.last_gate))
    lines.extend(report.monitoring)
    lines.extend(report.api)
    lines.extend(report.security)
    return "\n".join(lines)
