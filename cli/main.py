"""`reggaeton`: operate the running stack from one command line.

Every command finds the stack that is up without flags (see ``cli.endpoints`` for the order in which
endpoints are chosen). A command that cannot reach a service, an unknown command or a version that does
not exist ends with one line on stderr and a non-zero exit, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from cli import endpoints as stack_endpoints
from cli.commands import (
    EXIT_ERROR,
    CommandError,
    Context,
    Handler,
    cmd_alerts,
    cmd_canary,
    cmd_demo,
    cmd_deploy,
    cmd_down,
    cmd_gate,
    cmd_live_gate,
    cmd_monitor,
    cmd_promote,
    cmd_retrain,
    cmd_rollback,
    cmd_score,
    cmd_shadow,
    cmd_simulate,
    cmd_status,
    cmd_train,
    cmd_up,
    configure_logging,
    one_line,
)
from cli.endpoints import Unreachable
from embedded.stack import SERVICE_NAMES
from reggaeton import names
from reggaeton.batch import FORMATS
from reggaeton.settings import Settings

logger = logging.getLogger("reggaeton")

EXIT_USAGE = 2

EXAMPLES = f"""examples:
  reggaeton demo                     the whole loop once on this machine, then a summary
  reggaeton up                       start (or reuse) the local stack's services:
                                     {", ".join(SERVICE_NAMES)}
  reggaeton deploy                   work pool, deployments and automations (idempotent)
  reggaeton status                   URLs, champion and challenger, last decision and monitoring, API
  reggaeton train --n-trials 5       train and register a challenger
  reggaeton gate --version 2         gate a registered version against the champion
  reggaeton promote --version 2 --reason "hotfix"   operator override (the version must still be valid)
  reggaeton rollback --reason "precision dropped"   back to the previous champion
  reggaeton shadow                   the challenger under live evaluation: what it saw, the live comparison
  reggaeton shadow --start 4 --reason "try it live"   shadow a version without the offline gate (override)
  reggaeton live-gate                judge the challenger on live evidence now (the live-gate deployment)
  reggaeton canary start             the challenger answers the first canary step's share of requests
  reggaeton canary abort --reason "p99 alarm"   its share back to 0 at once (it keeps shadowing)
  reggaeton simulate --scenario drift --count 1000  traffic to the running API
  reggaeton monitor                  one monitoring pass now (the monitor deployment, on the worker)
  reggaeton retrain                  a retrain now (the train-and-promote deployment, on the worker)
  reggaeton score songs.csv --out scored   score a catalogue with the champion (resumable)
  reggaeton alerts                   the notifications the local receiver got
  reggaeton down                     stop what `up` started
  reggaeton --stack compose gate --version 2   the same commands against the compose stack (.env);
                                     train, gate, promote and rollback then run on its worker
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``reggaeton: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
            "services", nargs="*", help=f"any of {', '.join(SERVICE_NAMES)} (default: all)"
        )
    add(
        "status",
        cmd_status,
        "URLs, champion and challenger, last decision and monitoring, API, services down",
    )
    demo_cmd = add(
        "demo",
        cmd_demo,
        "the whole loop once on this machine (stack, first champion, drift, retrain), then a summary",
    )
    demo_cmd.add_argument(
        "--policy",
        choices=("offline", "shadow"),
        help="promotion policy (default: the settings', offline): shadow shows the live gate end to end",
    )
    deploy_cmd = add(
        "deploy", cmd_deploy, "work pool, deployments (prefect.yaml) and automations; idempotent"
    )
    deploy_cmd.add_argument("--automations-only", action="store_true", help="only re-apply the automations")
    _add_model_commands(add)
    _add_traffic_commands(add)
    _add_score_command(add)
    return parser


def _add_model_commands(add: Callable[[str, Handler, str], argparse.ArgumentParser]) -> None:
    """train, gate, promote, rollback."""
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
    shadow_cmd = add(
        "shadow",
        cmd_shadow,
        "the challenger under live evaluation: what it has seen, the live comparison so far",
    )
    shadow_cmd.add_argument(
        "--start",
        metavar="VERSION",
        help="put this registered version under live evaluation without the offline gate (operator override)",
    )
    shadow_cmd.add_argument("--reason", help="why (with --start)")
    canary_cmd = add("canary", cmd_canary, "start the challenger's canary, or abort it (share back to 0)")
    canary_cmd.add_argument("action", choices=("start", "abort"))
    canary_cmd.add_argument("--reason", help="why (abort)")
    live_cmd = add(
        "live-gate",
        cmd_live_gate,
        "judge the challenger on live evidence now (a run of the live-gate deployment)",
    )
    live_cmd.add_argument(
        "--wait-s",
        type=float,
        default=300,
        help="how long to wait for the deployment's one slot (default 300)",
    )
    for command in (promote_cmd, rollback_cmd, canary_cmd, shadow_cmd):
        command.add_argument("--by", default=None, help="who (default: the login name)")


def _add_traffic_commands(add: Callable[[str, Handler, str], argparse.ArgumentParser]) -> None:
    """monitor, retrain, simulate, alerts."""
    monitor_cmd = add(
        "monitor", cmd_monitor, "one monitoring pass now (a run of the monitor deployment), shown as it goes"
    )
    retrain_cmd = add(
        "retrain", cmd_retrain, "a retrain now (a run of the train-and-promote deployment on the worker)"
    )
    retrain_cmd.add_argument(
        "--timeout-s", type=float, default=3600, help="how long to wait for it to finish (default 3600)"
    )
    for command in (monitor_cmd, retrain_cmd):
        command.add_argument(
            "--wait-s",
            type=float,
            default=300,
            help="how long to wait for the deployment's one slot when another run holds it (default 300)",
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


def _add_score_command(add: Callable[[str, Handler, str], argparse.ArgumentParser]) -> None:
    """score."""
    score_cmd = add(
        "score",
        cmd_score,
        "score a CSV/Parquet catalogue (a file or a folder) with a registered version, in chunks on every "
        "core; a run stopped midway continues where it stopped when started again",
    )
    score_cmd.add_argument("input", help="a .csv/.parquet file or a folder of them: a path or an fsspec URL")
    score_cmd.add_argument(
        "--out", required=True, help="output folder: scores/ (one part per chunk), rejects, manifest.json"
    )
    which = score_cmd.add_mutually_exclusive_group()
    which.add_argument("--version", help="the registered version to score with")
    which.add_argument("--alias", help=f"the alias whose version scores (default: {names.CHAMPION})")
    score_cmd.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="of the output files")
    score_cmd.add_argument(
        "--id-columns",
        help="comma-separated input columns to pass through (default: id, id_*, *_id; '' for none)",
    )
    score_cmd.add_argument(
        "--restart", action="store_true", help="discard a partial run of this output instead of continuing it"
    )
    score_cmd.add_argument("--chunk-rows", type=int, help="rows per chunk (default: from the settings)")
    score_cmd.add_argument("--workers", type=int, help="scoring processes (default: one per core)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reggaeton`` console script."""
    for key, value in names.TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings = Settings()
        found = stack_endpoints.resolve(settings, args.stack)
        stack_endpoints.export_credentials(found)  # the compose stack's, from its .env
        ctx = Context(stack_endpoints.apply(settings, found), found, args.debug)
        handler: Handler = args.handler
        return handler(ctx, args)
    except (Unreachable, CommandError, ValueError) as exc:
        if args.debug:
            raise
        sys.stderr.write(f"reggaeton {args.command}: {one_line(exc)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"reggaeton {args.command}: interrupted\n")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        sys.stderr.write(
            f"reggaeton {args.command}: {type(exc).__name__}: {one_line(exc)} (--debug for the traceback)\n"
        )
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
