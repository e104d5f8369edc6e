"""What an operator flow did, in the lines its command prints, also logged on the run's outcome logger.

``reggaeton gate|promote|rollback|train|shadow|canary`` print these lines when the flow returns in their
own process (the local stack), and read them from the run's logs (``names.OUTCOME_LOG``) when the flow
ran on the stack's worker (``--stack compose``): the same lines either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect import get_run_logger
from prefect.logging.loggers import PrefectLogAdapter

from reggaeton import live, names
from reggaeton.promotion import slice_lines


def decision_lines(result: Mapping[str, Any]) -> list[str]:
    """A promotion flow's result (``asdict(promote.Outcome)``): what it did, its slices, the champion."""
    lines = [f"{result['action']}: version {result['version']} {result['outcome']} ({result['reason']})"]
    if result.get("slices"):
        lines.append("per slice (PR-AUC, challenger minus champion with its interval):")
        lines += [f"  {line}" for line in slice_lines(result["slices"])]
    lines.append(f"champion: version {result['champion']}")
    return lines


def live_lines(result: Mapping[str, Any]) -> list[str]:
    """An operator's live command (``live_gate.LiveOutcome``): what the challenger does now."""
    if result["action"] == live.SHADOW:
        return [f"shadow: version {result['version']} under live evaluation ({result['reason']})"]
    verb = "start" if result["action"] == live.START_CANARY else "abort"
    return [f"canary {verb}: version {result['version']} answers {result['share']:.0%} of requests"]


def challenger_line(version: str | int) -> str:
    """The version a training run registered."""
    return f"challenger: version {version}"


def log_outcome(lines: Iterable[str]) -> None:
    """Log the lines on the flow run's outcome logger, as one record (call inside a flow run).

    One record keeps their order: the API sorts a run's logs by time, and lines logged in the same
    microsecond would come back in any order.
    """
    logger = get_run_logger()
    if isinstance(logger, PrefectLogAdapter):
        logger = logger.getChild(names.OUTCOME_LOG)
    logger.info("\n".join(lines))
