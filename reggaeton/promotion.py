"""The champion/challenger decision: a pure function over two models' scores on the same evaluation rows.

The primary metric (PR-AUC) must improve beyond noise: the lower end of a paired, stratified bootstrap
interval of ``PR-AUC(challenger) - PR-AUC(champion)`` must exceed ``min_gain``. Guardrails (ROC-AUC, Brier,
latency per row) must not regress beyond their tolerance, and the challenger must be valid (it loaded,
predicted on the schema's examples, and its signature matched). Without a usable champion, the challenger
only has to clear absolute floors. Nothing here talks to MLflow or Prefect (see ``flows/promote.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import numpy as np

from reggaeton.metrics import SCORE_METRICS, Interval, paired_bootstrap_difference
from reggaeton.settings import PromotionSettings

PROMOTED: Final = "promoted"
REJECTED: Final = "rejected"
Outcome = Literal["promoted", "rejected"]

PR_AUC: Final = "pr_auc"
ROC_AUC: Final = "roc_auc"
BRIER: Final = "brier"
LATENCY_MS: Final = "latency_ms"  # median one-row predict latency, in milliseconds


@dataclass(frozen=True)
class ModelScores:
    """One model version's probabilities on the evaluation rows, its latency and what was wrong with it.

    ``evaluation`` identifies the evaluation data (a content hash); ``decide`` refuses to compare scores
    computed on different data.
    """

    version: str
    evaluation: str
    y_true: np.ndarray
    proba: np.ndarray | None = None  # None when the model could not load or predict
    latency_ms: float | None = None
    problems: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        """Loaded, predicted and matched the signature."""
        return not self.problems and self.proba is not None

    def metrics(self) -> dict[str, float]:
        """PR-AUC, ROC-AUC, Brier and latency (empty for an invalid model)."""
        if not self.valid or self.proba is None:
            return {}
        values = {name: float(metric(self.y_true, self.proba)) for name, metric in SCORE_METRICS.items()}
        if self.latency_ms is not None:
            values[LATENCY_MS] = float(self.latency_ms)
        return values


@dataclass(frozen=True)
class Check:
    """One test of the gate: what was measured against which limit, and whether it passed."""

    name: str
    passed: bool
    value: float | None
    limit: float | None
    detail: str


@dataclass(frozen=True)
class Decision:
    """The outcome of the gate with every number it was based on and a one-line reason."""

    outcome: Outcome
    reason: str
    challenger_version: str
    champion_version: str | None
    evaluation: str
    rows: int
    positives: int
    challenger_metrics: Mapping[str, float]
    champion_metrics: Mapping[str, float] | None
    pr_auc_gain: Interval | None
    checks: tuple[Check, ...]
    policy: Mapping[str, float] = field(default_factory=dict)
    # The live gate's evidence (reggaeton.live: the labelled looks, errors, latency, label-free
    # comparisons, the action and its reason) when live traffic decided; None for an offline decision.
    live: Mapping[str, Any] | None = None

    @property
    def promote(self) -> bool:
        """Whether the challenger becomes champion."""
        return self.outcome == PROMOTED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (tags, event payloads)."""
        record = asdict(self)
        record["challenger_metrics"] = dict(self.challenger_metrics)
        record["champion_metrics"] = dict(self.champion_metrics) if self.champion_metrics else None
        record["policy"] = dict(self.policy)
        record["live"] = dict(self.live) if self.live is not None else None
        return record


def decide(champion: ModelScores | None, challenger: ModelScores, policy: PromotionSettings) -> Decision:
    """Decide whether ``challenger`` replaces ``champion`` (None: there is no champion yet).

    Raises:
        ValueError: the two models were scored on different evaluation data.
    """
    if champion is not None and (
        champion.evaluation != challenger.evaluation or not np.array_equal(champion.y_true, challenger.y_true)
    ):
        raise ValueError(
            f"champion {champion.version} and challenger {challenger.version} were scored on different "
            f"evaluation data ({champion.evaluation[:12]} vs {challenger.evaluation[:12]})"
        )
    y_true = np.asarray(challenger.y_true)
    base: dict[str, Any] = {
        "challenger_version": challenger.version,
        "champion_version": champion.version if champion is not None else None,
        "evaluation": challenger.evaluation,
        "rows": len(y_true),
        "positives": int(y_true.sum()),
        "challenger_metrics": challenger.metrics(),
        "champion_metrics": champion.metrics() if champion is not None and champion.valid else None,
        "policy": policy.model_dump(),
    }

    problems = "; ".join(challenger.problems) or ("ok" if challenger.valid else "no predictions")
    validity = Check("valid", challenger.valid, None, None, problems)
    if not challenger.valid:
        reason = f"invalid challenger: {validity.detail}"
        return Decision(outcome=REJECTED, reason=reason, pr_auc_gain=None, checks=(validity,), **base)

    if champion is None or not champion.valid:
        prefix = (
            "no champion yet"
            if champion is None
            else f"champion {champion.version} is unusable ({'; '.join(champion.problems)})"
        )
        return _against_floors(challenger.metrics(), validity, prefix, policy, base)
    return _against_champion(champion, challenger, validity, policy, base)


def _against_floors(
    metrics: Mapping[str, float],
    validity: Check,
    prefix: str,
    policy: PromotionSettings,
    base: dict[str, Any],
) -> Decision:
    checks = (
        validity,
        _at_least("floor_pr_auc", metrics[PR_AUC], policy.min_pr_auc, "PR-AUC"),
        _at_least("floor_roc_auc", metrics[ROC_AUC], policy.min_roc_auc, "ROC-AUC"),
    )
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = f"{prefix}, and below the floor: {'; '.join(c.detail for c in failed)}"
        return Decision(outcome=REJECTED, reason=reason, pr_auc_gain=None, checks=checks, **base)
    reason = f"{prefix}: {checks[1].detail} and {checks[2].detail}"
    return Decision(outcome=PROMOTED, reason=reason, pr_auc_gain=None, checks=checks, **base)


def _against_champion(
    champion: ModelScores,
    challenger: ModelScores,
    validity: Check,
    policy: PromotionSettings,
    base: dict[str, Any],
) -> Decision:
    assert champion.proba is not None and challenger.proba is not None  # both valid
    gain = paired_bootstrap_difference(
        challenger.y_true,
        champion.proba,
        challenger.proba,
        SCORE_METRICS[PR_AUC],
        rounds=policy.bootstrap_rounds,
        seed=policy.seed,
        confidence=policy.confidence,
    )
    ours, theirs = challenger.metrics(), champion.metrics()
    primary = Check(
        "pr_auc_gain",
        gain.low > policy.min_gain,
        gain.low,
        policy.min_gain,
        f"PR-AUC gain {gain.estimate:+.4f}, {policy.confidence:.0%} interval "
        f"[{gain.low:+.4f}, {gain.high:+.4f}], lower end must exceed {policy.min_gain:+.4f}",
    )
    guardrails = [
        _at_least("roc_auc", ours[ROC_AUC], theirs[ROC_AUC] - policy.roc_auc_tolerance, "ROC-AUC"),
        _at_most("brier", ours[BRIER], theirs[BRIER] + policy.brier_tolerance, "Brier"),
    ]
    if LATENCY_MS in ours and LATENCY_MS in theirs:
        limit = max(theirs[LATENCY_MS] * policy.latency_tolerance, policy.latency_budget_ms)
        guardrails.append(_at_most("latency", ours[LATENCY_MS], limit, "latency ms/row"))
    checks = (validity, primary, *guardrails)
    if not primary.passed:
        reason = f"not better beyond noise: {primary.detail}"
        return Decision(outcome=REJECTED, reason=reason, pr_auc_gain=gain, checks=checks, **base)
    broken = [c for c in guardrails if not c.passed]
    if broken:
        reason = f"better on PR-AUC ({gain.estimate:+.4f}) but a guardrail regressed: " + "; ".join(
            c.detail for c in broken
        )
        return Decision(outcome=REJECTED, reason=reason, pr_auc_gain=gain, checks=checks, **base)
    reason = f"better beyond noise: {primary.detail}; guardrails held"
    return Decision(outcome=PROMOTED, reason=reason, pr_auc_gain=gain, checks=checks, **base)


def _at_least(name: str, value: float, limit: float, label: str) -> Check:
    passed = value >= limit
    return Check(name, passed, value, limit, f"{label} {value:.4f} {'>=' if passed else '<'} {limit:.4f}")


def _at_most(name: str, value: float, limit: float, label: str) -> Check:
    passed = value <= limit
    return Check(name, passed, value, limit, f"{label} {value:.4f} {'<=' if passed else '>'} {limit:.4f}")


_ROWS: Final = ((PR_AUC, "PR-AUC"), (ROC_AUC, "ROC-AUC"), (BRIER, "Brier"), (LATENCY_MS, "latency ms/row"))


def markdown_report(decision: Decision, title: str = "Champion/challenger decision") -> str:
    """The side-by-side table people read in the Prefect UI."""
    champion = decision.champion_metrics or {}
    challenger = decision.challenger_metrics
    head = f"version {decision.champion_version}" if decision.champion_version else "none"
    lines = [
        f"# {title}",
        "",
        f"**{decision.outcome.upper()}**: {decision.reason}",
        "",
        f"Evaluation data: {decision.rows} rows, {decision.positives} positives "
        f"(`{decision.evaluation[:12]}`).",
        "",
        f"| metric | champion ({head}) | challenger (version {decision.challenger_version}) | difference |",
        "|---|---|---|---|",
    ]
    for key, label in _ROWS:
        ours, theirs = challenger.get(key), champion.get(key)
        diff = f"{ours - theirs:+.4f}" if ours is not None and theirs is not None else "-"
        lines.append(f"| {label} | {_fmt(theirs)} | {_fmt(ours)} | {diff} |")
    if decision.pr_auc_gain is not None:
        gain = decision.pr_auc_gain
        lines += ["", f"PR-AUC gain {gain.estimate:+.4f}, interval [{gain.low:+.4f}, {gain.high:+.4f}]."]
    if decision.live is not None:
        lines += ["", "## Live evidence", "", *live_markdown(decision.live)]
    lines += ["", "| check | passed | value | limit | detail |", "|---|---|---|---|---|"]
    for check in decision.checks:
        lines.append(
            f"| {check.name} | {'yes' if check.passed else 'NO'} | {_fmt(check.value)} | "
            f"{_fmt(check.limit)} | {check.detail} |"
        )
    return "\n".join(lines) + "\n"


def live_markdown(live: Mapping[str, Any]) -> list[str]:
    """The live evidence (``Decision.live``, a ``reggaeton.live.LiveEvidence`` record) as markdown lines."""
    labelled = live.get("labelled") or {}
    lines = [
        f"**{live.get('action', '?')}**: {live.get('reason', '')}",
        "",
        f"Live labelled rows: {labelled.get('rows', 0)}, positives {labelled.get('positives', 0)} "
        f"(looks at {', '.join(str(n) for n in live.get('planned_looks', ()))} positives, "
        f"each at {float(labelled.get('confidence') or 0):.1%}).",
        "",
        "| look (positives) | rows | PR-AUC gain | interval | verdict |",
        "|---|---|---|---|---|",
    ]
    for look in labelled.get("looks") or ():
        gain = look["gain"]
        lines.append(
            f"| {look['positives']} | {look['rows']} | {float(gain['estimate']):+.4f} | "
            f"[{float(gain['low']):+.4f}, {float(gain['high']):+.4f}] | {look['verdict']} |"
        )
    for key in ("shadow_errors", "canary_errors"):
        errors = live.get(key)
        if errors:
            lines += ["", f"- {key.replace('_', ' ')}: {errors.get('errors')} of {errors.get('attempts')}"]
    latency = live.get("latency")
    if latency and latency.get("difference_ms"):
        d = latency["difference_ms"]
        lines.append(
            f"- canary latency vs champion: {float(d['estimate']):+.1f} ms "
            f"[{float(d['low']):+.1f}, {float(d['high']):+.1f}]"
        )
    for key, value in (live.get("unlabelled") or {}).items():
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
