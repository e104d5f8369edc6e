"""The ``reggaeton`` subcommands: one function per thing an operator does, given the stack's endpoints."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import endpoints as stack_endpoints
from cli.endpoints import Endpoints, Unreachable
from reggaeton.settings import Settings

if TYPE_CHECKING:  # the command line imports Prefect only for the commands that use it
    from embedded.manual import Watch

logger = logging.getLogger("reggaeton")

EXIT_ERROR = 1
# The operator's commands on a container stack run as deployment runs on its worker: how long they wait
# for another run of the same deployment to end, and for their own to finish.
WORKER_WAIT_S = 300.0
DECISION_TIMEOUT_S = 900.0
TRAIN_TIMEOUT_S = 3600.0
# How Prefect states a flow that raised (``prefect.states.exception_to_failed_state``), and the operator
# flows' own error (``flows.promote.PromotionError``), whose message is the one line to show.
FLOW_EXCEPTION_PREFIX = "Flow run encountered an exception: "
PROMOTION_ERROR = "PromotionError"


class CommandError(RuntimeError):
    """A command that cannot do what it was asked; its message is the one line the operator sees."""


@dataclass(frozen=True)
class Context:
    """What every command gets: the settings pointed at the stack, and its endpoints."""

    settings: Settings
    endpoints: Endpoints
    debug: bool


Handler = Callable[[Context, argparse.Namespace], int]


# --- the commands -------------------------------------------------------------------------------------
def cmd_up(ctx: Context, args: argparse.Namespace) -> int:
    """Start (or reuse) the local stack."""
    from embedded import stack

    _local_only(ctx, "up", "docker-compose up -d")
    _check_services(args.services)
    # A server the user named (MLFLOW_TRACKING_URI, PREFECT_API_URL, ...) is used as it is.
    named = {"mlflow": "mlflow", "prefect-server": "prefect_api"}
    chosen = {
        service
        for service, endpoint in named.items()
        if ctx.endpoints.sources.get(endpoint, "default") != "default"
        and not ctx.endpoints.sources[endpoint].endswith("stack.json")
    }
    try:
        started = stack.up(_local_settings(ctx), args.services or stack.SERVICE_NAMES, chosen)
    except stack.PortHeld as exc:
        raise CommandError(str(exc)) from exc
    for name, what in started.items():
        print(f"{name:<15} {what}")
    _print_urls(stack_endpoints.resolve(ctx.settings, stack_endpoints.LOCAL, environ={}))
    return 0


def cmd_down(ctx: Context, args: argparse.Namespace) -> int:
    """Stop exactly what ``up`` started."""
    from embedded import stack

    _local_only(ctx, "down", "docker-compose down")
    _check_services(args.services)
    for name, what in stack.down(_local_settings(ctx), args.services or stack.SERVICE_NAMES).items():
        print(f"{name:<15} {what}")
    return 0


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    """Everything an operator asks first, in one screen."""
    from cli import status

    report = status.collect(ctx.settings, ctx.endpoints)
    print(status.render(report))
    return 0


def cmd_demo(ctx: Context, args: argparse.Namespace) -> int:
    """The whole loop once, then a summary."""
    from embedded import demo

    _local_only(ctx, "demo", "docker-compose up -d")
    settings = _local_settings(ctx)
    if args.policy is not None:
        settings = settings.model_copy(
            update={"live": settings.live.model_copy(update={"policy": args.policy})}
        )
    try:
        report = demo.run_demo(settings)
    except demo.DemoError as exc:
        raise CommandError(str(exc)) from exc
    sys.stdout.write(demo.summary(settings, report))
    return 0


def cmd_deploy(ctx: Context, args: argparse.Namespace) -> int:
    """Work pool, deployments and automations (idempotent)."""
    from flows.automations import apply_automations
    from flows.deploy import deploy

    stack_endpoints.require(ctx.endpoints, "prefect")
    if args.automations_only:
        apply_automations(ctx.settings)
    else:
        deploy(ctx.settings)
    print(f"deployed on {ctx.endpoints.prefect_ui}")
    return 0


def cmd_train(ctx: Context, args: argparse.Namespace) -> int:
    """Train and register a challenger (and gate it with ``--gate``)."""
    from reggaeton.names import TRAIN_DEPLOYMENT, TRAIN_ONLY_DEPLOYMENT

    if _on_worker(ctx):
        if args.data_folder is not None:
            raise CommandError(
                "--data-folder names a folder on this machine; the compose stack's worker trains on its own "
                "data source (REGGAETON_DATA__FOLDER in its environment)"
            )
        parameters = {} if args.n_trials is None else {"n_trials": args.n_trials}
        deployment = TRAIN_DEPLOYMENT if args.gate else TRAIN_ONLY_DEPLOYMENT
        return _worker_command(ctx, deployment, parameters, TRAIN_TIMEOUT_S)
    stack_endpoints.require(ctx.endpoints, "mlflow", "prefect")
    import optuna

    from adapters.prefect_api import prefect_api_at
    from flows import promote, train
    from flows.outcome import challenger_line, decision_lines

    quiet_tracebacks(ctx.debug)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar shows the trials
    with prefect_api_at(ctx.endpoints.prefect_api):
        if args.gate:
            result = promote.train_and_promote(args.data_folder, args.n_trials, ctx.settings)
            lines = [challenger_line(result["version"]), *decision_lines(result)]
        else:
            version = train.train_flow(
                data_folder=args.data_folder, n_trials=args.n_trials, settings=ctx.settings
            )
            lines = [challenger_line(version)]
    print("\n".join(lines))
    return 0


def cmd_gate(ctx: Context, args: argparse.Namespace) -> int:
    """Gate a registered version against the champion."""
    from reggaeton.names import GATE_DEPLOYMENT

    if _on_worker(ctx):
        parameters = {"version": args.version}
        return _worker_command(ctx, GATE_DEPLOYMENT, parameters, DECISION_TIMEOUT_S, version=args.version)
    from flows import promote

    return _registry_command(ctx, args.version, lambda: promote.promotion_gate(args.version, ctx.settings))


def cmd_promote(ctx: Context, args: argparse.Namespace) -> int:
    """Operator override: make a version champion (it must still be valid)."""
    from reggaeton.names import PROMOTE_DEPLOYMENT

    if _on_worker(ctx):
        parameters = {"version": args.version, "reason": args.reason, "by": _operator(args)}
        return _worker_command(ctx, PROMOTE_DEPLOYMENT, parameters, DECISION_TIMEOUT_S, version=args.version)
    from flows import promote

    return _registry_command(
        ctx, args.version, lambda: promote.promote_version(args.version, args.reason, args.by, ctx.settings)
    )


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    """Back to the previous champion."""
    from reggaeton.names import ROLLBACK_DEPLOYMENT

    if _on_worker(ctx):
        parameters = {"reason": args.reason, "by": _operator(args)}
        return _worker_command(ctx, ROLLBACK_DEPLOYMENT, parameters, DECISION_TIMEOUT_S)
    from flows import promote

    return _registry_command(ctx, None, lambda: promote.rollback(args.reason, args.by, ctx.settings))


def cmd_shadow(ctx: Context, args: argparse.Namespace) -> int:
    """What the challenger under live evaluation has seen, and what the live gate would do now."""
    from reggaeton.names import LIVE_REPORT_DEPLOYMENT, SHADOW_START_DEPLOYMENT

    if _on_worker(ctx):
        if args.start is None:
            return _worker_command(ctx, LIVE_REPORT_DEPLOYMENT, {}, DECISION_TIMEOUT_S)
        parameters = {"version": args.start, "reason": args.reason or "operator", "by": _operator(args)}
        return _worker_command(
            ctx, SHADOW_START_DEPLOYMENT, parameters, DECISION_TIMEOUT_S, version=args.start
        )
    stack_endpoints.require(ctx.endpoints, "mlflow", "prefect")
    from adapters.prefect_api import prefect_api_at
    from flows import live_gate

    quiet_tracebacks(ctx.debug)
    if args.start is not None:
        from prefect.events.worker import EventsWorker

        from flows.outcome import live_lines

        try:
            with prefect_api_at(ctx.endpoints.prefect_api):
                started = live_gate.shadow_start(args.start, args.reason or "operator", args.by, ctx.settings)
        except live_gate.LiveGateError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            EventsWorker.drain_all()
        print("\n".join(live_lines(started)))
        return 0
    with prefect_api_at(ctx.endpoints.prefect_api):
        report = live_gate.live_report(ctx.settings)
    print("\n".join(live_gate.report_lines(report, ctx.settings)))
    return 0


def cmd_canary(ctx: Context, args: argparse.Namespace) -> int:
    """Start the challenger's canary at its first step, or abort it (share 0 at once)."""
    from reggaeton.names import CANARY_ABORT_DEPLOYMENT, CANARY_START_DEPLOYMENT

    if _on_worker(ctx):
        if args.action == "start":
            return _worker_command(ctx, CANARY_START_DEPLOYMENT, {"by": _operator(args)}, DECISION_TIMEOUT_S)
        parameters = {"reason": args.reason or "operator", "by": _operator(args)}
        return _worker_command(ctx, CANARY_ABORT_DEPLOYMENT, parameters, DECISION_TIMEOUT_S)
    stack_endpoints.require(ctx.endpoints, "mlflow", "prefect")
    from prefect.events.worker import EventsWorker

    from adapters.prefect_api import prefect_api_at
    from flows import live_gate
    from flows.outcome import live_lines

    quiet_tracebacks(ctx.debug)
    try:
        with prefect_api_at(ctx.endpoints.prefect_api):
            if args.action == "start":
                result = live_gate.canary_start(args.by, ctx.settings)
            else:
                result = live_gate.canary_abort(args.reason or "operator", args.by, ctx.settings)
    except live_gate.LiveGateError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        EventsWorker.drain_all()
    print("\n".join(live_lines(result)))
    return 0


def cmd_live_gate(ctx: Context, args: argparse.Namespace) -> int:
    """A run of the live-gate deployment now (what its schedule runs), on the stack's worker."""
    from reggaeton.names import LIVE_GATE_DEPLOYMENT

    run = _manual_run(ctx, LIVE_GATE_DEPLOYMENT, args.wait_s)
    return 0 if run.state is not None and run.state.is_completed() else EXIT_ERROR


def cmd_monitor(ctx: Context, args: argparse.Namespace) -> int:
    """One monitoring pass now: a run of the monitor deployment on the stack's worker, shown as it goes."""
    from cli.progress import RunProgress
    from reggaeton.names import MONITOR_DEPLOYMENT

    progress = RunProgress()
    run = _manual_run(ctx, MONITOR_DEPLOYMENT, args.wait_s, watch=progress)
    progress.drain(ctx.settings, run)
    if ctx.endpoints.stack == stack_endpoints.LOCAL:
        from cli import status

        print("\n".join(status.monitoring_lines(ctx.settings)))
    return 0 if run.state is not None and run.state.is_completed() else EXIT_ERROR


def cmd_retrain(ctx: Context, args: argparse.Namespace) -> int:
    """A retrain now: a run of the train-and-promote deployment on the worker (what `degraded` starts)."""
    from reggaeton.names import TRAIN_DEPLOYMENT

    run = _manual_run(ctx, TRAIN_DEPLOYMENT, args.wait_s, timeout_s=args.timeout_s)
    return 0 if run.state is not None and run.state.is_completed() else EXIT_ERROR


def _manual_run(
    ctx: Context,
    name: str,
    wait_s: float,
    timeout_s: float = 900,
    watch: Watch | None = None,
    parameters: dict[str, Any] | None = None,
    version: str | None = None,
) -> Any:
    """Run a deployment now, waiting for its one slot; when it stays taken, one line says by which run.

    ``version``: checked in the registry first, so a missing one is one line and no run starts.
    """
    from embedded import manual

    # Every deployment reads the registry: with MLflow down its run would only wait in MLflow's retries
    # (and hold a slot of the pool) before failing, minutes later.
    stack_endpoints.require(ctx.endpoints, "mlflow", "prefect")
    if version is not None:
        _check_version(ctx, version)
    print(f"{name}: flow run of the `{name}` deployment on {ctx.endpoints.prefect_ui} ...", flush=True)
    try:
        run = manual.run_when_free(
            ctx.settings, name, wait_s=wait_s, timeout_s=timeout_s, watch=watch, parameters=parameters
        )
    except LookupError as exc:
        raise CommandError(f"{exc} (or `reggaeton deploy`)") from exc
    except manual.SlotTaken as exc:
        raise CommandError(str(exc)) from exc
    state = run.state.name if run.state else "unknown"
    message = f": {run.state.message}" if run.state is not None and run.state.message else ""
    print(f"{name} run {run.name}: {state}{message}")
    return run


def _on_worker(ctx: Context) -> bool:
    """Whether the operator's commands run on the stack's worker: a container stack's data and signing
    key are there (its prediction log is its Postgres, not this machine's state folder)."""
    return ctx.endpoints.stack == stack_endpoints.COMPOSE


def _operator(args: argparse.Namespace) -> str:
    """Who runs the command: ``--by``, else this machine's login name (not the worker's)."""
    from adapters.decisions import operator_name

    return str(args.by or operator_name())


def _check_version(ctx: Context, version: str) -> None:
    """One line when the registry has no such version (before any run starts; MLflow answers)."""
    from mlflow import MlflowClient

    from adapters import registry

    client = MlflowClient(tracking_uri=ctx.settings.tracking_uri, registry_uri=ctx.settings.registry_uri)
    try:
        registry.find_version(client, ctx.settings.mlflow.model_name, version)
    except LookupError as exc:
        raise CommandError(str(exc)) from exc


def _worker_command(
    ctx: Context, name: str, parameters: dict[str, Any], timeout_s: float, version: str | None = None
) -> int:
    """Run an operator flow's deployment on the stack's worker, shown as it goes; print its outcome lines.

    ``version``: checked in the registry first (:func:`_manual_run`).

    Raises:
        CommandError: no such version, or the run did not complete (its failure message: a refused
            promotion's own words).
    """
    from cli.progress import RunProgress

    progress = RunProgress()
    run = _manual_run(
        ctx, name, WORKER_WAIT_S, timeout_s=timeout_s, watch=progress, parameters=parameters, version=version
    )
    completed = run.state is not None and run.state.is_completed()
    progress.drain(ctx.settings, run, outcome=completed)
    if not completed:
        raise CommandError(failure_line(name, run))
    if not progress.outcome:
        raise CommandError(
            f"{name} run {run.name} completed, but its outcome did not reach the Prefect API in time: its "
            f"logs in the UI ({ctx.endpoints.prefect_ui}/runs/flow-run/{run.id}) say what it did"
        )
    print("\n".join(progress.outcome))
    return 0


def failure_line(name: str, run: Any) -> str:
    """Why a flow run did not complete, in one line: a flow's own error as the flow said it."""
    state = run.state
    message = " ".join(str(state.message or "").split()) if state is not None else ""
    message = message.removeprefix(FLOW_EXCEPTION_PREFIX.strip()).strip()
    if message.startswith(f"{PROMOTION_ERROR}: "):
        return message.removeprefix(f"{PROMOTION_ERROR}: ")
    said = f": {message}" if message else ""
    return f"{name} run {run.name} {state.name if state is not None else 'ended'}{said}"


def cmd_score(ctx: Context, args: argparse.Namespace) -> int:
    """Score a catalogue with a registered version (resumable), showing rows, rows/s and ETA."""
    stack_endpoints.require(ctx.endpoints, "mlflow")
    from cli.score_progress import ScoreProgress
    from flows.batch_worker import ChunkPool
    from reggaeton.batch import worker_count

    batch = ctx.settings.batch.model_copy(
        update={
            key: value
            for key, value in (("chunk_rows", args.chunk_rows), ("workers", args.workers))
            if value is not None
        }
    )
    settings = ctx.settings.model_copy(update={"batch": type(batch).model_validate(batch.model_dump())})
    workers = worker_count(settings.batch.workers)
    # The scoring processes start now: they import their libraries while this one imports MLflow and
    # loads the version (a few seconds each, side by side).
    with ChunkPool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        from flows import batch_scoring

        request = batch_scoring.ScoringRequest(
            input=args.input,
            out=Path(args.out),
            version=args.version,
            alias=args.alias,
            output_format=args.format,
            id_columns=batch_scoring.id_column_list(args.id_columns),
            restart=args.restart,
        )
        progress = ScoreProgress(every_s=settings.batch.progress_every_s)
        try:
            result = batch_scoring.score(settings, request, progress, pool=pool)
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            progress.close()
    print(result.summary())
    return 0


def cmd_simulate(ctx: Context, args: argparse.Namespace) -> int:
    """Send simulated traffic (and late labels) to the running API."""
    from monitoring import simulate

    defaults = simulate.Run()
    options = simulate.Run(
        scenario=args.scenario,
        count=args.count,
        seed=args.seed,
        batch=args.batch,
        feedback_fraction=args.feedback_fraction,
        feedback_delay_s=args.feedback_delay_s,
        max_seconds=args.max_seconds,
        drift_share=defaults.drift_share if args.drift_share is None else args.drift_share,
    )
    problems = options.problems()
    if problems:
        raise CommandError("; ".join(problems))
    stack_endpoints.require(ctx.endpoints, "api")
    token, key = simulate.credentials(ctx.settings)
    counts = simulate.run(ctx.endpoints.api, token, options, api_key=key)
    print(f"scenario {args.scenario}: {counts}")
    return 0


def cmd_alerts(ctx: Context, args: argparse.Namespace) -> int:
    """The notifications the local alert receiver got (newest last)."""
    from embedded.receiver import read_alerts

    if ctx.endpoints.stack == stack_endpoints.COMPOSE:
        raise CommandError(
            "the compose stack sends alerts to its WEBHOOK_URL, else to its receiver container: "
            "`docker-compose logs receiver` shows them"
        )
    path = ctx.settings.alerts_path
    alerts = read_alerts(path)
    if not alerts and not stack_endpoints.answers(f"{ctx.endpoints.receiver}/health"):
        raise Unreachable(
            f"cannot reach receiver at {ctx.endpoints.receiver} and {path} has no alerts: "
            f"{ctx.endpoints.start_hint()}"
        )
    for alert in alerts[-args.last :]:
        print(f"{alert['received_at']}  {alert['subject']}")
        if args.body and alert.get("body"):
            print("    " + str(alert["body"]).replace("\n", "\n    "))
    print(f"{len(alerts)} alert(s) in {path}")
    return 0


# --- helpers ------------------------------------------------------------------------------------------
def _local_only(ctx: Context, command: str, instead: str) -> None:
    if ctx.endpoints.stack != stack_endpoints.LOCAL:
        raise CommandError(f"`{command}` manages the local stack; for the compose stack use `{instead}`")


def _check_services(names: Sequence[str]) -> None:
    from embedded.stack import SERVICE_NAMES

    if unknown := sorted(set(names) - set(SERVICE_NAMES)):
        raise CommandError(f"unknown service {', '.join(unknown)} (choose from {', '.join(SERVICE_NAMES)})")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _local_settings(ctx: Context) -> Settings:
    """The settings the local stack runs with: its MLflow through its own server."""
    # From the stack module, light to import: `up` and `down` need no MLflow, Prefect or scipy here.
    from embedded import stack

    return stack.stack_settings(ctx.settings)


def _print_urls(found: Endpoints) -> None:
    print(f"Prefect UI  {found.prefect_ui}")
    print(f"MLflow UI   {found.mlflow}")
    print(f"API docs    {found.api}/docs")
    if found.receiver:
        print(f"alerts      {found.receiver}/alerts")


def _registry_command(ctx: Context, version: str | None, run: Callable[[], dict[str, Any]]) -> int:
    """Run a promotion flow after checking the services and the version; print what it did."""
    stack_endpoints.require(ctx.endpoints, "mlflow", "prefect")
    from prefect.events.worker import EventsWorker

    from adapters.prefect_api import prefect_api_at
    from flows.outcome import decision_lines
    from flows.promote import PromotionError

    quiet_tracebacks(ctx.debug)
    if version is not None:
        _check_version(ctx, version)
    try:
        with prefect_api_at(ctx.endpoints.prefect_api):
            result = run()
    except PromotionError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        EventsWorker.drain_all()  # deliver the events before the process ends
    print("\n".join(decision_lines(result)))
    return 0


# --- terminal output ------------------------------------------------------------------------------
class _NoTraceback(logging.Filter):
    """Drop tracebacks from terminal log lines (Prefect logs a failed flow's with the error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for noisy in ("httpx", "httpcore", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_tracebacks(debug: bool) -> None:
    """Terminal log lines without tracebacks (call once Prefect is imported; ``--debug`` keeps them)."""
    if debug:
        return
    quiet = _NoTraceback()
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict)),
    ]
    for each in loggers:
        for handler in each.handlers:
            handler.addFilter(quiet)
