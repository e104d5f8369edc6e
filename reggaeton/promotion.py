"""The champion/challenger decision: a pure function over two models' scores on the same evaluation rows.

The primary metric (PR-AUC) must improve beyond noise: the lower end of a paired, stratified bootstrap
interval of ``PR-AUC(challenger) - PR-AUC(champion)`` must exceed ``min_gain``. Guardrails (ROC-AUC, Brier,
latency per row) must not regress beyond their tolerance, and the challenger must be valid (it loaded,
predicted on the schema's examples, and its signature matched). Without a usable champion, the challenger
only has to clear absolute floors. Nothing here talks to MLflow or Prefect (see ``flows/promote.py``).

**Slices** (``PromotionSettings.slices``): the overall rule judges one pool of rows, which is dominated by
whatever changed; each declared slice is judged on its own rows with the same paired bootstrap of the
PR-AUC difference. A slice with fewer positives than its ``min_positives`` (or no negative) is "too small
to judge": reported with its figures, never counted as held and never blocking. Under the default
``slice_rule="worse"`` a judged slice blocks the promotion when the challenger is worse beyond noise by
more than the slice's ``allowed_regression``: the upper end of its interval is below ``-allowed``. The
intervals are Bonferroni-adjusted over the judged slices (confidence ``1 - (1 - c) / m``), so the chance
that any slice blocks a challenger that is within every slice's allowance stays below ``(1 - c) / 2``: the
error controlled is a false block. Under ``slice_rule="within"`` a judged slice blocks unless the lower end
of its interval is above ``-allowed``: the challenger must show it is within the allowance; the error
controlled is a false pass (at most ``(1 - c) / 2`` per regressed slice, an intersection-union test, which
needs no adjustment for the number of slices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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

# What a slice's evidence says.
HELD: Final = "held"  # judged, and not worse beyond noise by more than its allowance
WORSE: Final = "worse"  # judged, and worse by more than its allowance: it blocks the promotion
TOO_SMALL: Final = "too small to judge"  # fewer positives than declared (or no negative): not judged
NOT_COMPARED: Final = "not compared"  # no usable champion (or no valid challenger) to compare with


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
class SliceRows:
    """A declared slice and which of the scored rows it holds."""

    name: str
    rule: str  # in words, for the report
    rows: np.ndarray  # boolean mask over the rows both models were scored on
    min_positives: int
    allowed_regression: float


@dataclass(frozen=True)
class SliceResult:
    """One slice's evidence: both models' PR-AUC on its rows, the paired interval of their difference."""

    name: str
    rule: str
    rows: int
    positives: int
    min_positives: int
    allowed_regression: float
    verdict: str  # HELD, WORSE, TOO_SMALL or NOT_COMPARED
    champion_pr_auc: float | None
    challenger_pr_auc: float | None
    pr_auc_difference: Interval | None  # challenger minus champion; None when not judged
    confidence: float | None  # of that interval (Bonferroni-adjusted under slice_rule "worse")
    detail: str

    @property
    def blocks(self) -> bool:
        """Whether this slice stops the promotion."""
        return self.verdict == WORSE


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
    policy: Mapping[str, Any] = field(default_factory=dict)
    slices: tuple[SliceResult, ...] = ()
    # The live gate's evidence (reggaeton.live: the labelled looks, errors, latency, label-free
    # comparisons, the action and its reason) when live traffic decided; None for an offline decision.
    live: Mapping[str, Any] | None = None

    @property
    def blocking_slices(self) -> tuple[SliceResult, ...]:
        """The slices that stopped the promotion."""
        return tuple(result for result in self.slices if result.blocks)

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


def decide(
    champion: ModelScores | None,
    challenger: ModelScores,
    policy: PromotionSettings,
    *,
    overall: np.ndarray | None = None,
    slices: Sequence[SliceRows] = (),
) -> Decision:
    """Decide whether ``challenger`` replaces ``champion`` (None: there is no champion yet).

    Args:
        champion: The champion's scores, or None.
        challenger: The challenger's scores on the same rows.
        policy: The gate's settings.
        overall: Which scored rows the overall rule judges (None: all); slices may hold more rows
            (e.g. a fresh sample of the base data).
        slices: The declared slices, each with its rows among the scored ones.

    Raises:
        ValueError: the two models were scored on different evaluation data, or a slice's mask does not
            fit the scored rows.
    """
    if champion is not None and (
        champion.evaluation != challenger.evaluation or not np.array_equal(champion.y_true, challenger.y_true)
    ):
        raise ValueError(
            f"champion {champion.version} and challenger {challenger.version} were scored on different "
            f"evaluation data ({champion.evaluation[:12]} vs {challenger.evaluation[:12]})"
        )
    results = judge_slices(champion, challenger, slices, policy)
    if overall is not None:
        champion = _on_rows(champion, overall) if champion is not None else None
        challenger = _on_rows(challenger, overall)
    decision = _decide_overall(champion, challenger, policy)
    return _with_slices(decision, results, policy.slice_rule)


def _on_rows(scores: ModelScores, rows: np.ndarray) -> ModelScores:
    """The scores restricted to some rows (a boolean mask)."""
    mask = np.asarray(rows, dtype=bool)
    if mask.shape != np.shape(scores.y_true):
        raise ValueError(f"a mask of {mask.shape} rows for {np.shape(scores.y_true)} scored rows")
    proba = None if scores.proba is None else np.asarray(scores.proba)[mask]
    return replace(scores, y_true=np.asarray(scores.y_true)[mask], proba=proba)


def _decide_overall(
    champion: ModelScores | None, challenger: ModelScores, policy: PromotionSettings
) -> Decision:
    """Today's rule on the overall rows: validity, then the gain beyond noise and guardrails (or floors)."""
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


# --- slices -----------------------------------------------------------------------------------------


def judge_slices(
    champion: ModelScores | None,
    challenger: ModelScores,
    slices: Sequence[SliceRows],
    policy: PromotionSettings,
) -> tuple[SliceResult, ...]:
    """Each slice's evidence (see the module docstring for the rule and the error it controls)."""
    y_true = np.asarray(challenger.y_true)
    masks = []
    for spec in slices:
        mask = np.asarray(spec.rows, dtype=bool)
        if mask.shape != y_true.shape:
            raise ValueError(f"slice {spec.name}: a mask of {mask.shape} rows for {y_true.shape} scored rows")
        masks.append(mask)
    comparable = champion is not None and champion.valid and challenger.valid
    judged = [
        comparable and _has_power(y_true[mask], spec.min_positives)
        for spec, mask in zip(slices, masks, strict=True)
    ]
    confidence = policy.confidence
    if policy.slice_rule == "worse" and any(judged):
        confidence = 1 - (1 - policy.confidence) / sum(judged)
    return tuple(
        _slice_result(champion, challenger, spec, mask, judge, confidence, policy)
        for spec, mask, judge in zip(slices, masks, judged, strict=True)
    )


def _has_power(y_true: np.ndarray, min_positives: int) -> bool:
    positives = int(y_true.sum())
    return positives >= min_positives and positives < len(y_true)


def _pr_auc(y_true: np.ndarray, scores: ModelScores | None, mask: np.ndarray) -> float | None:
    if scores is None or not scores.valid or scores.proba is None or y_true.sum() in (0, len(y_true)):
        return None
    return float(SCORE_METRICS[PR_AUC](y_true, np.asarray(scores.proba)[mask]))


def _slice_result(
    champion: ModelScores | None,
    challenger: ModelScores,
    spec: SliceRows,
    mask: np.ndarray,
    judged: bool,
    confidence: float,
    policy: PromotionSettings,
) -> SliceResult:
    y_true = np.asarray(challenger.y_true)[mask]
    positives = int(y_true.sum())
    base: dict[str, Any] = {
        "name": spec.name,
        "rule": spec.rule,
        "rows": int(mask.sum()),
        "positives": positives,
        "min_positives": spec.min_positives,
        "allowed_regression": spec.allowed_regression,
        "champion_pr_auc": _pr_auc(y_true, champion, mask),
        "challenger_pr_auc": _pr_auc(y_true, challenger, mask),
    }
    if not judged:
        if not _has_power(y_true, spec.min_positives):
            detail = (
                f"{positives} positives of {len(y_true)} rows, fewer than the {spec.min_positives} declared"
                if positives < spec.min_positives
                else f"no negative among its {len(y_true)} rows"
            )
            verdict = TOO_SMALL
        else:
            detail, verdict = "no usable champion to compare with", NOT_COMPARED
        return SliceResult(**base, verdict=verdict, pr_auc_difference=None, confidence=None, detail=detail)
    assert champion is not None and champion.proba is not None and challenger.proba is not None
    difference = paired_bootstrap_difference(
        y_true,
        np.asarray(champion.proba)[mask],
        np.asarray(challenger.proba)[mask],
        SCORE_METRICS[PR_AUC],
        rounds=policy.slice_bootstrap_rounds,
        seed=policy.seed,
        confidence=confidence,
    )
    limit = -spec.allowed_regression
    interval = f"{confidence:.1%} interval [{difference.low:+.4f}, {difference.high:+.4f}]"
    if policy.slice_rule == "worse":
        worse = difference.high < limit
        relation = (
            f"worse beyond noise: the interval's upper end is below {limit:+.4f}"
            if worse
            else f"not shown worse than {limit:+.4f}"
        )
    else:
        worse = difference.low < limit
        relation = (
            f"not shown within the allowance: the interval's lower end is below {limit:+.4f}"
            if worse
            else f"shown within {limit:+.4f}"
        )
    return SliceResult(
        **base,
        verdict=WORSE if worse else HELD,
        pr_auc_difference=difference,
        confidence=confidence,
        detail=f"PR-AUC {difference.estimate:+.4f}, {interval}: {relation}",
    )


def _with_slices(decision: Decision, results: tuple[SliceResult, ...], rule: str) -> Decision:
    """The decision with its slice evidence; a promotion a slice blocks becomes a rejection naming it."""
    checks = decision.checks + tuple(
        Check(
            f"slice:{result.name}",
            not result.blocks,
            (result.pr_auc_difference.high if rule == "worse" else result.pr_auc_difference.low),
            -result.allowed_regression,
            result.detail,
        )
        for result in results
        if result.pr_auc_difference is not None
    )
    blocking = [result for result in results if result.blocks]
    if not decision.promote or not blocking:
        return replace(decision, slices=results, checks=checks)
    named = "; ".join(
        f"slice '{result.name}' ({result.rule}) is worse than its allowed -{result.allowed_regression:.2f}: "
        f"{result.detail}"
        for result in blocking
    )
    reason = f"{named}; overall it was {decision.reason}"
    return replace(decision, outcome=REJECTED, reason=reason, slices=results, checks=checks)


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
    if decision.slices:
        lines += ["", "## Slices", "", *slice_markdown([asdict(result) for result in decision.slices])]
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


def _difference_text(result: Mapping[str, Any]) -> str:
    difference = result.get("pr_auc_difference")
    if not isinstance(difference, Mapping):
        return "-"
    return (
        f"{float(difference['estimate']):+.3f} [{float(difference['low']):+.3f}, "
        f"{float(difference['high']):+.3f}]"
    )


def _verdict_text(result: Mapping[str, Any]) -> str:
    verdict = str(result.get("verdict"))
    return "**WORSE: blocks**" if verdict == WORSE else verdict


def slice_markdown(slices: Sequence[Mapping[str, Any]]) -> list[str]:
    """The slice table (from ``Decision.to_dict()["slices"]``) as markdown lines."""
    lines = [
        "| slice | rule | rows | positives (min) | champion PR-AUC | challenger PR-AUC "
        "| difference [interval] | allowed | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in slices:
        lines.append(
            f"| {result['name']} | {result['rule']} | {result['rows']} | "
            f"{result['positives']} ({result['min_positives']}) | {_fmt3(result.get('champion_pr_auc'))} | "
            f"{_fmt3(result.get('challenger_pr_auc'))} | {_difference_text(result)} | "
            f"-{float(result['allowed_regression']):.2f} | {_verdict_text(result)} |"
        )
    confidences = {result["confidence"] for result in slices if result.get("confidence") is not None}
    if confidences:
        lines += [
            "",
            f"Slice intervals at {max(confidences):.1%} confidence (adjusted for the slices judged).",
        ]
    return lines


def slice_lines(slices: Sequence[Mapping[str, Any]]) -> list[str]:
    """The slice table (from ``Decision.to_dict()["slices"]``) as aligned text for a terminal."""
    rows = [("slice", "rows", "pos", "champion", "challenger", "difference [interval]", "verdict")]
    for result in slices:
        verdict = str(result.get("verdict"))
        rows.append(
            (
                str(result["name"]),
                str(result["rows"]),
                str(result["positives"]),
                _fmt3(result.get("champion_pr_auc")),
                _fmt3(result.get("challenger_pr_auc")),
                _difference_text(result),
                "WORSE (blocks)" if verdict == WORSE else verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _fmt3(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
