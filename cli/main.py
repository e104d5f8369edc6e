"""`reggaeton`: operate the running stack from one command line.

Every command finds the stack that is up without flags (see ``cli.endpoints`` for the order in which
endpoints are chosen). A command that cannot reach a service, an unknown command or a version that does
not exist ends with one line on stderr and a non-zero exit, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cli import endpoints as stack_endpoints
from cli.endpoints import Endpoints, Unreachable
from reggaeton.settings import Settings

logger = logging.getLogger("reggaeton")

EXIT_ERROR = 1
EXIT_USAGE = 2

EXAMPLES = """examples:
  reggaeton up                       start (or reuse) the local stack
  reggaeton status                   URLs, champion and challenger, last decision and monitoring, API
  reggaeton train --n-trials 5       train and register a challenger
  reggaeton gate --version 2         gate a registered version against the champion
  reggaeton promote --version 2 --reason "hotfix"   operator override (the version must still be valid)
  reggaeton rollback --reason "precision dropped"   back to the previous champion
  reggaeton simulate --scenario drift --count 1000  traffic to the running API
  reggaeton monitor                  one monitoring pass now (the monitor deployment, on the worker)
  reggaeton alerts                   the notifications the local receiver got
  reggaeton down                     stop what `up` started
"""


class CommandError(RuntimeError):
    """A command that cannot do what it was asked; its message is the one line the operator sees."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``reggaeton: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
    for name, what in stack.up(_local_settings(ctx), args.services or stack.SERVICE_NAMES).items():
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
    report = demo.run_demo(settings)
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
    stack_endpoints.require(ctx.endpoints, "mlflow", "prefect")
    import optuna

    from adapters.prefect_api import prefect_api_at
    from flows import promote, train

    _quiet_tracebacks(ctx.debug)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar shows the trials
    with prefect_api_at(ctx.endpoints.prefect_api):
        if args.gate:
            result: Any = promote.train_and_promote(args.data_folder, args.n_trials, ctx.settings)
            print(json.dumps(result))
        else:
            version = train.train_flow(
                data_folder=args.data_folder, n_trials=args.n_trials, settings=ctx.settings
            )
            print(f"challenger: version {version}")
    return 0


def cmd_gate(ctx: Context, args: argparse.Namespace) -> int:
    """Gate a registered version against the champion."""
    from flows import promote

    return _registry_command(ctx, args.version, lambda: promote.promotion_gate(args.version, ctx.settings))


def cmd_promote(ctx: Context, args: argparse.Namespace) -> int:
    """Operator override: make a version champion (it must still be valid)."""
    from flows import promote

    return _registry_command(
        ctx, args.version, lambda: promote.promote_version(args.version, args.reason, args.by, ctx.settings)
    )


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    """Back to the previous champion."""
    from flows import promote

    return _registry_command(ctx, None, lambda: promote.rollback(args.reason, args.by, ctx.settings))


def cmd_monitor(ctx: Context, args: argparse.Namespace) -> int:
    """One monitoring pass now: a run of the monitor deployment on the stack's worker."""
    from embedded import demo

    stack_endpoints.require(ctx.endpoints, "prefect")
    print(f"monitor: flow run of the `monitor` deployment on {ctx.endpoints.prefect_ui} ...", flush=True)
    try:
        run = demo.run_monitor(ctx.settings, attempts=args.attempts)
    except LookupError as exc:
        raise CommandError(f"{exc} (or `reggaeton deploy`)") from exc
    state = run.state.name if run.state else "unknown"
    print(f"monitor run {run.name}: {state}")
    if ctx.endpoints.stack == stack_endpoints.LOCAL:
        from cli import status

        print("\n".join(status.monitoring_lines(ctx.settings)))
    return 0 if run.state is not None and run.state.is_completed() else EXIT_ERROR


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
    counts = simulate.run(ctx.endpoints.api, ctx.settings.serving.admin_token.get_secret_value(), options)
    print(f"scenario {args.scenario}: {counts}")
    return 0


def cmd_alerts(ctx: Context, args: argparse.Namespace) -> int:
    """The notifications the local alert receiver got (newest last)."""
    from embedded.receiver import read_alerts

    if ctx.endpoints.stack == stack_endpoints.COMPOSE:
        raise CommandError(
            "the compose stack sends alerts to its WEBHOOK_URL; the local receiver is not part of it"
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _local_settings(ctx: Context) -> Settings:
    """The settings the local stack runs with: its MLflow through its own server."""
    from embedded import demo

    return demo.stack_settings(ctx.settings)


def _print_urls(found: Endpoints) -> None:
    print(f"Prefect UI  {found.prefect_ui}")
    print(f"MLflow UI   {found.mlflow}")
    print(f"API docs    {found.api}/docs")
    if found.receiver:
        print(f"alerts      {found.receiver}/alerts")


def _registry_command(ctx: Context, version: str | None, run: Callable[[], dict[str, Any]]) -> int:
    """Run a promotion flow after checking the services and the version; print what it did."""
    stack_endpoints.require(ctx.endpoints, "mlflow", "prefect")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from prefect.events.worker import EventsWorker

    from adapters.prefect_api import prefect_api_at
    from flows.promote import PromotionError

    _quiet_tracebacks(ctx.debug)
    if version is not None:
        client = MlflowClient(tracking_uri=ctx.settings.tracking_uri, registry_uri=ctx.settings.registry_uri)
        name = ctx.settings.mlflow.model_name
        try:
            client.get_model_version(name, version)
        except MlflowException as exc:
            found = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            known = ", ".join(map(str, found)) or "none"
            raise CommandError(f"{name} has no version {version!r} (registered versions: {known})") from exc
    try:
        with prefect_api_at(ctx.endpoints.prefect_api):
            result = run()
    except PromotionError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        EventsWorker.drain_all()  # deliver the events before the process ends
    print(f"{result['action']}: version {result['version']} {result['outcome']} ({result['reason']})")
    print(f"champion: version {result['champion']}")
    return 0


class _NoTraceback(logging.Filter):
    """Drop tracebacks from terminal log lines (Prefect logs a failed flow's with the error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for noisy in ("httpx", "httpcore", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_tracebacks(debug: bool) -> None:
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


# --- the parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per thing an operator does."""
    parser = _Parser(
        prog="reggaeton",
        description="Operate the reggaeton loop: the local stack, training, promotion, monitoring.",
        epilog=EXAMPLES
        + "\nendpoints: REGGAETON_* settings > MLFLOW_TRACKING_URI / PREFECT_API_URL > --stack compose (.env "
        "ports) > <state>/stack.json (recorded by `up`) > the local defaults",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stack",
        choices=stack_endpoints.STACKS,
        help=f"which stack to talk to (default: ${stack_endpoints.STACK_ENV} or local)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    for name, handler, text in (
        ("up", cmd_up, "start (or reuse) the local stack and record its endpoints in <state>/stack.json"),
        ("down", cmd_down, "stop exactly the processes `up` started (by their PID files)"),
    ):
        add(name, handler, text).add_argument(
            "services", nargs="*", help="prefect-server, mlflow, receiver, worker, api (default: all)"
        )
    add(
        "status",
        cmd_status,
        "URLs, champion and challenger, last decision and monitoring, API, services down",
    )
    add(
        "demo",
        cmd_demo,
        "the whole loop once on this machine (stack, first champion, drift, retrain), then a summary",
    )
    deploy_cmd = add(
        "deploy", cmd_deploy, "work pool, deployments (prefect.yaml) and automations; idempotent"
    )
    deploy_cmd.add_argument("--automations-only", action="store_true", help="only re-apply the automations")
    train_cmd = add("train", cmd_train, "train and register a challenger (Optuna trials show a progress bar)")
    train_cmd.add_argument(
        "--data-folder", help="folder in the original CSV layout (default: synthetic sample)"
    )
    train_cmd.add_argument("--n-trials", type=int, help="Optuna trials (default: from the settings)")
    train_cmd.add_argument("--gate", action="store_true", help="then gate it (the train-and-promote flow)")
    gate_cmd = add(
        "gate", cmd_gate, "gate a registered version against the champion on the same evaluation rows"
    )
    gate_cmd.add_argument("--version", required=True)
    promote_cmd = add("promote", cmd_promote, "make a version champion (operator override; it must be valid)")
    promote_cmd.add_argument("--version", required=True)
    promote_cmd.add_argument("--reason", required=True)
    rollback_cmd = add("rollback", cmd_rollback, "make the previous champion champion again")
    rollback_cmd.add_argument("--reason", required=True)
    for command in (promote_cmd, rollback_cmd):
        command.add_argument("--by", default=None, help="who (default: the login name)")
    monitor_cmd = add("monitor", cmd_monitor, "one monitoring pass now (a run of the monitor deployment)")
    monitor_cmd.add_argument(
        "--attempts", type=int, default=5, help="retries when a scheduled run is in progress"
    )
    simulate_cmd = add("simulate", cmd_simulate, "send simulated traffic and late labels to the running API")
    simulate_cmd.add_argument("--scenario", default="stable", help="stable or drift (default: stable)")
    simulate_cmd.add_argument("--count", type=int, default=5000, help="songs to send (at most)")
    simulate_cmd.add_argument("--seed", type=int, default=0)
    simulate_cmd.add_argument("--batch", type=int, default=100, help="songs per POST /predict")
    simulate_cmd.add_argument("--feedback-fraction", type=float, default=0.3)
    simulate_cmd.add_argument("--feedback-delay-s", type=float, default=2.0)
    simulate_cmd.add_argument("--max-seconds", type=float, default=120.0)
    simulate_cmd.add_argument(
        "--drift-share", type=float, help="share of drifted songs (default: the simulator's)"
    )
    alerts_cmd = add("alerts", cmd_alerts, "the notifications the local alert receiver got")
    alerts_cmd.add_argument("--last", type=int, default=20, help="show the last N (default 20)")
    alerts_cmd.add_argument("--body", action="store_true", help="with each alert's body")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reggaeton`` console script."""
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        settings = Settings()
        found = stack_endpoints.resolve(settings, args.stack)
        ctx = Context(stack_endpoints.apply(settings, found), found, args.debug)
        handler: Handler = args.handler
        return handler(ctx, args)
    except (Unreachable, CommandError, ValueError) as exc:
        if args.debug:
            raise
        sys.stderr.write(f"reggaeton {args.command}: {_one_line(exc)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"reggaeton {args.command}: interrupted\n")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        sys.stderr.write(
            f"reggaeton {args.command}: {type(exc).__name__}: {_one_line(exc)} (--debug for the traceback)\n"
        )
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
