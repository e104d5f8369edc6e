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
    monitoring: list[str] = field(default_factory=list)
    api: list[str] = field(default_factory=list)


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


def monitoring_lines(settings: Settings, chunks: int = 6) -> list[str]:
    """The last monitor run and its latest chunk windows, from the local results store."""
    from monitoring import store

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
    else:
        lines.append(f"API serves no model ({model.status_code})")
    lines.append(f"API /ready {ready.status_code}: {ready.text.strip()}")
    names_and_lines = [(line.split(" ")[0].split("{")[0], line) for line in metrics.text.splitlines()]
    samples = [
        line
        for name, line in names_and_lines
        if name.startswith("reggaeton_")
        and any(word in name for word in QUEUE_WORDS)
        and not name.endswith("_created")
    ]
    lines.extend(f"  {sample}" for sample in samples)
    return lines


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
    return "\n".join(lines)
