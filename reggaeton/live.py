"""The live gate's rules: judge a challenger on live traffic, move a canary, promote or reject (pure).

A challenger under live evaluation (policy ``shadow`` or ``canary``, ``LiveSettings``) is scored beside
the champion on the same requests: every answered request gets the other model's answer too (a shadow
row with the same prediction id), so the evidence is **paired** on the same live rows.

**Labelled evidence** (``judge_labelled``): the paired, stratified bootstrap of
``PR-AUC(challenger) - PR-AUC(champion)`` on the live rows whose feedback label arrived, taken at planned
looks only: when the labelled positives first reach ``min_positives``, then 2x, 4x ... (``max_looks``
looks). Each look judges exactly the rows whose labels arrived first, up to the one carrying its n-th
positive (labels in arrival order: a later label never changes an earlier look), at confidence
``1 - (1 - confidence) / max_looks``. Error controlled: promoting a challenger that is not better, and
rejecting one that is not worse, each at most ``(1 - confidence) / 2`` over all looks however often the
gate runs (Bonferroni over the planned looks). Positives are counted, not rows: under a 3 % prior the
positives set PR-AUC's noise. After the last look, a challenger not shown better is rejected.

**Errors** (``judge_errors``): shadow answers that raised, hung or were not probabilities, and canary
requests the champion had to answer; the lower end of the error rate's Wilson interval above
``max_error_rate`` rejects (the champion's rate is zero by construction: it answers or the request fails).

**Canary latency** (``judge_latency``): the canary's mean answer time minus the champion's, per cluster
(one replica's stats interval, where both answered), a t interval over clusters (unpaired requests,
clustered: requests of one interval share the machine's load). The lower end above
``canary_latency_budget_ms`` aborts.

``decide`` combines them into one action; the offline gate (and its slices) must still pass for a
promotion (checked by the caller with ``reggaeton.promotion.decide``, see ``with_offline``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
from scipy.stats import norm, t

from reggaeton.live_states import CANARY as CANARY
from reggaeton.live_states import CANARY_SHARE as CANARY_SHARE
from reggaeton.live_states import CANARY_STEP as CANARY_STEP
from reggaeton.live_states import CHAMPION as CHAMPION
from reggaeton.live_states import REGISTERED as REGISTERED
from reggaeton.live_states import REJECTED as REJECTED
from reggaeton.live_states import SHADOW as SHADOW
from reggaeton.live_states import UNDER_EVALUATION as UNDER_EVALUATION
from reggaeton.live_states import assigned_share as assigned_share
from reggaeton.metrics import SCORE_METRICS, Interval, paired_bootstrap_difference
from reggaeton.settings import LiveSettings

# What the labelled evidence says.
WAITING: Final = "waiting"  # fewer labelled positives than the first look needs
BETTER: Final = "better"  # better beyond noise at a look
WORSE: Final = "worse"  # worse beyond noise at a look
INCONCLUSIVE: Final = "inconclusive"  # neither, at every look so far; the next look may tell
NOT_SHOWN_BETTER: Final = "not shown better"  # neither, and the last planned look is taken

# What the live gate does.
Action = Literal["wait", "promote", "reject", "start_canary", "advance_canary", "abort_canary"]
WAIT: Final[Action] = "wait"
PROMOTE: Final[Action] = "promote"
REJECT: Final[Action] = "reject"
START_CANARY: Final[Action] = "start_canary"
ADVANCE_CANARY: Final[Action] = "advance_canary"
ABORT_CANARY: Final[Action] = "abort_canary"

_PR_AUC: Final = "pr_auc"


def planned_looks(policy: LiveSettings) -> tuple[int, ...]:
    """Labelled positives at each planned look: ``min_positives``, twice that, four times ..."""
    return tuple(policy.min_positives * 2**k for k in range(policy.max_looks))


def look_confidence(policy: LiveSettings) -> float:
    """The confidence of each look's interval (Bonferroni over the planned looks)."""
    return 1 - (1 - policy.confidence) / policy.max_looks


@dataclass(frozen=True)
class LabelledPairs:
    """Both models' probabilities on the live rows whose label arrived, in the order the labels did."""

    y_true: np.ndarray
    champion: np.ndarray
    challenger: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.y_true) == len(self.champion) == len(self.challenger):
            raise ValueError("labels and both models' probabilities must have one value per row")

    @property
    def positives(self) -> int:
        """Labelled positives."""
        return int(np.sum(self.y_true))

    def first(self, positives: int) -> LabelledPairs:
        """The rows up to (and with) the one carrying the ``positives``-th positive."""
        end = int(np.flatnonzero(np.asarray(self.y_true) == 1)[positives - 1]) + 1
        return LabelledPairs(self.y_true[:end], self.champion[:end], self.challenger[:end])


@dataclass(frozen=True)
class Look:
    """One planned look: how many positives it judged and what the interval said."""

    positives: int
    rows: int
    gain: Interval  # PR-AUC, challenger minus champion
    verdict: str  # BETTER, WORSE or INCONCLUSIVE


@dataclass(frozen=True)
class LabelledVerdict:
    """The labelled evidence so far."""

    verdict: str
    rows: int
    positives: int
    next_look: int | None  # positives the next look needs (None: every planned look is taken)
    confidence: float
    looks: tuple[Look, ...] = ()
    champion_pr_auc: float | None = None
    challenger_pr_auc: float | None = None

    @property
    def detail(self) -> str:
        """One line for people."""
        if self.verdict == WAITING:
            return f"{self.positives} labelled positives of the {self.next_look} the first look needs"
        last = self.looks[-1]
        gain = last.gain
        said = (
            f"PR-AUC gain {gain.estimate:+.4f}, {self.confidence:.1%} interval "
            f"[{gain.low:+.4f}, {gain.high:+.4f}] at the look on {last.positives} positives "
            f"({last.rows} rows)"
        )
        if self.verdict == INCONCLUSIVE:
            return (
                f"{said}: neither better nor worse beyond noise yet; next look at {self.next_look} positives"
            )
        if self.verdict == NOT_SHOWN_BETTER:
            return f"{said}: not better beyond noise at the last planned look"
        return f"{said}: {self.verdict} beyond noise"


def judge_labelled(pairs: LabelledPairs, policy: LiveSettings, seed: int = 0) -> LabelledVerdict:
    """Take every planned look the labelled positives have reached (see the module docstring)."""
    looks = planned_looks(policy)
    confidence = look_confidence(policy)
    positives = pairs.positives
    reached = [n for n in looks if n <= positives]
    base: dict[str, Any] = {"rows": len(pairs.y_true), "positives": positives, "confidence": confidence}
    if len(pairs.y_true) and 0 < positives < len(pairs.y_true):
        metric = SCORE_METRICS[_PR_AUC]
        base["champion_pr_auc"] = float(metric(pairs.y_true, pairs.champion))
        base["challenger_pr_auc"] = float(metric(pairs.y_true, pairs.challenger))
    if not reached:
        return LabelledVerdict(WAITING, next_look=looks[0], **base)
    taken: list[Look] = []
    for n in reached:
        sample = pairs.first(n)
        if int(np.sum(sample.y_true)) == len(sample.y_true):  # no negative yet: PR-AUC is 1 for both
            break
        gain = paired_bootstrap_difference(
            sample.y_true,
            sample.champion,
            sample.challenger,
            SCORE_METRICS[_PR_AUC],
            rounds=policy.bootstrap_rounds,
            seed=seed,
            confidence=confidence,
        )
        verdict = BETTER if gain.low > policy.min_gain else WORSE if gain.high < 0 else INCONCLUSIVE
        taken.append(Look(n, len(sample.y_true), gain, verdict))
        if verdict != INCONCLUSIVE:
            return LabelledVerdict(verdict, next_look=None, looks=tuple(taken), **base)
    if not taken:
        return LabelledVerdict(WAITING, next_look=looks[0], **base)
    following = [n for n in looks if n > taken[-1].positives]
    if not following:
        return LabelledVerdict(NOT_SHOWN_BETTER, next_look=None, looks=tuple(taken), **base)
    return LabelledVerdict(INCONCLUSIVE, next_look=following[0], looks=tuple(taken), **base)


@dataclass(frozen=True)
class ErrorVerdict:
    """An error rate with its Wilson interval, and whether it exceeds the allowed rate beyond noise."""

    what: str  # "shadow" or "canary"
    attempts: int
    errors: int
    low: float
    high: float
    limit: float

    @property
    def exceeded(self) -> bool:
        """The interval's lower end is above the allowed rate."""
        return self.low > self.limit

    @property
    def detail(self) -> str:
        """One line for people."""
        if not self.attempts:
            return f"no {self.what} answers yet"
        return (
            f"{self.what} errors {self.errors} of {self.attempts} ({self.errors / self.attempts:.1%}, "
            f"interval [{self.low:.1%}, {self.high:.1%}]), allowed {self.limit:.1%}"
        )


def wilson_interval(errors: int, attempts: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (0..1 when there are no attempts)."""
    if attempts <= 0:
        return 0.0, 1.0
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = errors / attempts
    centre = (p + z * z / (2 * attempts)) / (1 + z * z / attempts)
    half = z * math.sqrt(p * (1 - p) / attempts + z * z / (4 * attempts * attempts)) / (1 + z * z / attempts)
    return max(0.0, centre - half), min(1.0, centre + half)


def judge_errors(what: str, errors: int, attempts: int, policy: LiveSettings) -> ErrorVerdict:
    """Whether a challenger errs more often than allowed, beyond noise."""
    low, high = wilson_interval(errors, attempts, policy.confidence)
    return ErrorVerdict(what, attempts, errors, low, high, policy.max_error_rate)


@dataclass(frozen=True)
class LatencyCluster:
    """One replica's stats interval: mean answer time of each route there (seconds)."""

    canary_mean_s: float
    champion_mean_s: float


@dataclass(frozen=True)
class LatencyVerdict:
    """The canary's extra answer time, in milliseconds, over the clusters where both routes answered."""

    clusters: int
    difference_ms: Interval | None  # None below two clusters
    budget_ms: float

    @property
    def exceeded(self) -> bool:
        """The interval's lower end is above the budget."""
        return self.difference_ms is not None and self.difference_ms.low > self.budget_ms

    @property
    def detail(self) -> str:
        """One line for people."""
        if self.difference_ms is None:
            return f"canary latency: {self.clusters} interval(s) with both routes, at least 2 needed"
        d = self.difference_ms
        return (
            f"canary answers {d.estimate:+.1f} ms vs the champion's (interval [{d.low:+.1f}, {d.high:+.1f}] "
            f"over {self.clusters} intervals), budget {self.budget_ms:g} ms"
        )


def judge_latency(clusters: Sequence[LatencyCluster], policy: LiveSettings) -> LatencyVerdict:
    """A t interval of the mean per-cluster difference (canary minus champion), in milliseconds."""
    budget = policy.canary_latency_budget_ms
    if len(clusters) < 2:
        return LatencyVerdict(len(clusters), None, budget)
    diffs = np.array([(c.canary_mean_s - c.champion_mean_s) * 1000 for c in clusters])
    mean = float(diffs.mean())
    half = float(
        t.ppf(1 - (1 - policy.confidence) / 2, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    )
    return LatencyVerdict(len(clusters), Interval(mean, mean - half, mean + half), budget)


@dataclass(frozen=True)
class LiveEvidence:
    """Everything the live gate knows about one challenger now."""

    state: str  # SHADOW or CANARY
    elapsed_s: float  # since its live evaluation began
    labelled: LabelledVerdict
    shadow_errors: ErrorVerdict
    canary_errors: ErrorVerdict | None = None  # in CANARY
    latency: LatencyVerdict | None = None  # in CANARY
    canary_step: int | None = None  # index into canary_steps, in CANARY
    step_elapsed_s: float = 0.0  # in CANARY, since the step began
    step_requests: int = 0  # in CANARY, canary requests since the step began
    canary_wanted: bool = False  # policy canary, and no operator abort for this version
    # Label-free comparisons for people (agreement, score distributions, CBPE): reported, not judged.
    unlabelled: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the decision record digests it)."""
        record = asdict(self)
        record["unlabelled"] = dict(self.unlabelled)
        return record


@dataclass(frozen=True)
class LiveAction:
    """What the live gate does now, and why."""

    action: Action
    reason: str
    share: float = 0.0  # the canary's share of requests after the action
    step: int | None = None  # the canary step after the action


def decide(evidence: LiveEvidence, policy: LiveSettings) -> LiveAction:
    """The live gate's action for one challenger (the offline gate is applied by ``with_offline``)."""
    in_canary = evidence.state == CANARY
    fail: Action = ABORT_CANARY if in_canary else REJECT
    for errors in (evidence.shadow_errors, evidence.canary_errors):
        if errors is not None and errors.exceeded:
            return LiveAction(fail, f"too many errors: {errors.detail}")
    if in_canary and evidence.latency is not None and evidence.latency.exceeded:
        return LiveAction(fail, f"too slow: {evidence.latency.detail}")
    labelled = evidence.labelled
    if labelled.verdict == WORSE:
        return LiveAction(fail, f"worse on live labelled rows: {labelled.detail}")
    if labelled.verdict == NOT_SHOWN_BETTER:
        return LiveAction(fail, f"not better on live labelled rows: {labelled.detail}")
    steps = policy.canary_steps
    if in_canary:
        assert evidence.canary_step is not None
        step = evidence.canary_step
        step_done = (
            evidence.step_elapsed_s >= policy.canary_step_s
            and evidence.step_requests >= policy.canary_min_requests
        )
        if step_done and step + 1 < len(steps):
            return LiveAction(
                ADVANCE_CANARY,
                f"step {step + 1} held {evidence.step_elapsed_s:.0f} s over {evidence.step_requests} canary "
                f"requests without errors or latency beyond noise: {steps[step + 1]:.0%} of requests next",
                share=steps[step + 1],
                step=step + 1,
            )
        if labelled.verdict == BETTER and step_done:
            return LiveAction(
                PROMOTE, f"every canary step held, and better on live labelled rows: {labelled.detail}"
            )
        if evidence.elapsed_s >= policy.max_duration_s:
            return LiveAction(fail, _window_ended(evidence, policy))
        return LiveAction(WAIT, _waiting(evidence, policy), share=steps[step], step=step)
    if labelled.verdict == BETTER and not evidence.canary_wanted:
        return LiveAction(PROMOTE, f"better on live labelled rows: {labelled.detail}")
    if evidence.elapsed_s >= policy.max_duration_s:
        return LiveAction(REJECT, _window_ended(evidence, policy))
    if (
        evidence.canary_wanted
        and evidence.elapsed_s >= policy.canary_after_s
        and evidence.shadow_errors.attempts
    ):
        return LiveAction(
            START_CANARY,
            f"shadowed {evidence.elapsed_s:.0f} s without errors beyond noise "
            f"({evidence.shadow_errors.detail}): "
            f"the canary answers {steps[0]:.0%} of requests",
            share=steps[0],
            step=0,
        )
    return LiveAction(WAIT, _waiting(evidence, policy))


def _window_ended(evidence: LiveEvidence, policy: LiveSettings) -> str:
    window = policy.max_duration_s
    return f"the evidence window of {window:g} s ended without a verdict: {evidence.labelled.detail}"


def _waiting(evidence: LiveEvidence, policy: LiveSettings) -> str:
    left = max(0.0, policy.max_duration_s - evidence.elapsed_s)
    return f"waiting ({left:.0f} s of the window left): {evidence.labelled.detail}"


def with_offline(action: LiveAction, offline_promotes: bool, offline_reason: str) -> LiveAction:
    """A promotion the offline gate (or one of its slices) does not pass becomes a rejection naming it."""
    if action.action != PROMOTE or offline_promotes:
        return action
    return replace(
        action,
        action=REJECT,
        reason=(
            f"better on live traffic, but the offline gate rejects it: {offline_reason}; "
            f"live: {action.reason}"
        ),
    )


def canary_share(steps: Sequence[float], step: int | None) -> float:
    """The share of requests the canary answers at a step (0 outside the canary)."""
    return 0.0 if step is None else float(steps[step])
