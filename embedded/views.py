"""How registered versions and gate decisions read on a terminal (the demo summary, ``reggaeton status``).

Two kinds of figures, never mixed up: each version's **own held-out** metrics (measured at training time,
each on its own held-out rows, so two versions' figures are not comparable), and the **gate's** figures
(champion and challenger scored on the same evaluation rows, with the interval of the PR-AUC gain).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from reggaeton import names
from reggaeton.promotion import slice_lines

SUMMARY_METRICS = ("pr_auc", "roc_auc", "f1", "brier")


@dataclass
class VersionInfo:
    """A registered version as the terminal shows it."""

    version: str
    metrics: dict[str, float] = field(default_factory=dict)  # own held-out figures (training time)
    decision: str | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None  # the gate's decision record (same evaluation rows)
    data_hash: str | None = None
    created_at: str | None = None
    decided_at: str | None = None


def version_info(version: ModelVersion, metrics: Mapping[str, float] | None = None) -> VersionInfo:
    """What training and the gate recorded on a version.

    Args:
        version: The registered version (its tags hold the decision and the data hash).
        metrics: Its own held-out metrics (``adapters.registry.version_metrics``, one request to MLflow);
            None where only the decision is shown.
    """
    tags = dict(version.tags or {})
    detail = None
    if raw := tags.get(names.Tag.DECISION_DETAIL):
        try:
            detail = json.loads(raw)
        except json.JSONDecodeError:
            detail = None
    created = None
    if version.creation_timestamp:
        created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
    return VersionInfo(
        version=str(version.version),
        metrics=dict(metrics or {}),
        decision=tags.get(names.Tag.DECISION),
        reason=tags.get(names.Tag.DECISION_REASON),
        detail=detail,
        data_hash=tags.get(names.Tag.DATA_HASH),
        created_at=created,
        decided_at=tags.get(names.Tag.DECIDED_AT),
    )


def number(value: Any) -> str:
    """A metric rounded to three decimals (text that is not a number as it is)."""
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return str(value)


def metric_list(metrics: Mapping[str, Any]) -> str:
    """``pr_auc=0.850, roc_auc=0.970, ...`` over the summary metrics that are present."""
    shown = [(key, metrics[key]) for key in SUMMARY_METRICS if key in metrics]
    return ", ".join(f"{key}={number(value)}" for key, value in shown) or "no metrics recorded"


def held_out_line(label: str, info: VersionInfo | None) -> str:
    """One version with its own held-out figures, labelled as such."""
    if info is None:
        return f"{label}: none"
    facts = [
        f"trained {info.created_at}" if info.created_at else "",
        f"data {info.data_hash[:12]}" if info.data_hash else "",
    ]
    about = ", ".join(fact for fact in facts if fact)
    return (
        f"{label}: version {info.version}{f' ({about})' if about else ''}\n"
        f"  its own held-out rows (not comparable across versions): {metric_list(info.metrics)}"
    )


def decision_lines(info: VersionInfo) -> list[str]:
    """The gate's decision on a version: both models on the same evaluation rows, the gain's interval."""
    if info.decision is None:
        return [f"version {info.version}: no decision recorded"]
    when = f" at {info.decided_at}" if info.decided_at else ""
    lines = [f"decision on version {info.version}: {info.decision}{when} ({info.reason})"]
    detail = info.detail
    if not detail:
        return lines
    rows, positives = detail.get("rows"), detail.get("positives")
    lines.append(
        f"  the gate's figures, both models on the same {rows} evaluation rows ({positives} positives):"
    )
    champion = detail.get("champion_version")
    if champion is not None and detail.get("champion_metrics"):
        lines.append(f"    champion   version {champion}: {metric_list(detail['champion_metrics'])}")
    elif champion is None:
        lines.append("    champion   none (the challenger had to clear the absolute floors)")
    lines.append(
        f"    challenger version {detail.get('challenger_version')}: "
        f"{metric_list(detail.get('challenger_metrics') or {})}"
    )
    gain = detail.get("pr_auc_gain")
    if isinstance(gain, Mapping):
        lines.append(
            f"    PR-AUC gain {float(gain['estimate']):+.3f}, interval "
            f"[{float(gain['low']):+.3f}, {float(gain['high']):+.3f}]"
        )
    slices = detail.get("slices")
    if isinstance(slices, list) and slices:
        lines.append("  per slice (PR-AUC, challenger minus champion with its interval):")
        lines.extend(f"    {line}" for line in slice_lines(slices))
    return lines


def timing_line(name: str, seconds: float, target_s: float | None = None) -> str:
    """``time, NAME: 42 s``, with the target and whether it was met when there is one."""
    line = f"time, {name}: {seconds:.0f} s"
    if target_s is None:
        return line
    return f"{line} (target <= {target_s:.0f} s: {'met' if seconds <= target_s else 'MISSED'})"


def live_lines(live: Mapping[str, Any]) -> list[str]:
    """The live gate's evidence (``Decision.live``) in a few lines for the demo's summary."""
    labelled = live.get("labelled") or {}
    lines = [
        f"live gate: {live.get('action')}: {live.get('reason')}",
        f"  live labelled rows {labelled.get('rows')}, positives {labelled.get('positives')} "
        f"(looks at {', '.join(str(n) for n in live.get('planned_looks') or ())})",
    ]
    for look in labelled.get("looks") or ():
        gain = look["gain"]
        lines.append(
            f"  look at {look['positives']} positives: PR-AUC gain {gain['estimate']:+.3f} "
            f"[{gain['low']:+.3f}, {gain['high']:+.3f}]: {look['verdict']}"
        )
    unlabelled = live.get("unlabelled") or {}
    if "agreement" in unlabelled:
        lines.append(
            f"  on {unlabelled.get('requests')} requests: agreement {unlabelled['agreement']:.1%}, "
            f"positive rate champion {unlabelled.get('champion_positive_rate')} / challenger "
            f"{unlabelled.get('challenger_positive_rate')}"
        )
    errors = live.get("shadow_errors") or {}
    lines.append(f"  shadow errors {errors.get('errors', 0)} of {errors.get('attempts', 0)} answers")
    return lines
