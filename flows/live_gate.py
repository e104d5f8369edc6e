"""The live gate: judge the challenger under live evaluation on the live traffic it shadowed.

The ``live-gate`` deployment runs this flow on a schedule (``live.policy`` shadow or canary). It reads
the challenger's live state (``adapters.live_state``), both models' answers on the same requests with
the labels that arrived (``adapters.live_log``), the replicas' error and latency counts, and the
label-free comparisons (agreement, score distributions, CBPE of each model against its own reference);
``reggaeton.live.decide`` turns them into one action:

- ``wait``: the comparison so far is published (artifact and plot), nothing changes;
- ``promote``: only when the offline gate (and its slices) still passes, scored now: the decision, with
  both evidences, is applied like the offline gate's (tags, alias, ``promoted`` event);
- ``reject``: the same, with ``rejected``; the replicas stop shadowing it;
- ``start_canary`` / ``advance_canary``: the canary's share moves a step (``canary_step`` event);
- ``abort_canary``: the share goes to 0 and the challenger is rejected; one ``canary_aborted`` alert
  says why.

Operator commands: ``reggaeton shadow`` (``live_report``), ``reggaeton shadow --start N``, ``reggaeton canary
start|abort``; on a container stack each runs as a deployment of its name on the worker.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from adapters import decisions, live_log, live_state, prefect_events, registry
from adapters.live_state import LiveState
from adapters.prediction_log import make_engine, missing_sqlite_file
from adapters.prefect_api import decision_lock
from flows import gate, promote
from flows.outcome import live_lines, log_outcome
from monitoring.estimation import estimate_whole
from monitoring.live_report import live_png
from reggaeton import live, names
from reggaeton.decision_record import SigningKey
from reggaeton.live import LabelledPairs, LatencyCluster, LiveEvidence
from reggaeton.promotion import PROMOTED, REJECTED, Outcome, live_markdown
from reggaeton.settings import LiveSettings, Settings

logger = logging.getLogger(__name__)

NONE: Final = "none"  # the outcome when no challenger is under live evaluation
RECENT_ROWS: Final = 100_000  # answered requests read for the label-free comparisons, at most
_FAILURES: Final = ("raised", "timeouts", "invalid")


class LiveGateError(RuntimeError):
    """An operator command that cannot be applied (no challenger under evaluation, no canary to abort)."""


@dataclass(frozen=True)
class LiveOutcome:
    """What one live gate run (or operator command) did."""

    action: str  # reggaeton.live's action, or NONE
    version: str | None  # the challenger
    champion: str | None  # the champion afterwards
    reason: str
    share: float = 0.0  # the canary's share afterwards
    evidence: Mapping[str, Any] | None = None


# --- evidence (plain functions over frames) -------------------------------------------------------------
def _sum(frame: pd.DataFrame, column: str) -> int:
    return int(frame[column].sum()) if len(frame) else 0


def _of(stats: pd.DataFrame, role: str, version: str) -> pd.DataFrame:
    """The stats rows of one role and version."""
    return stats[(stats["role"] == role) & (stats["model_version"] == version)]


def _failures(frame: pd.DataFrame) -> int:
    return sum(_sum(frame, column) for column in _FAILURES)


def latency_clusters(stats: pd.DataFrame, challenger: str, champion: str) -> list[LatencyCluster]:
    """Per (replica, stats interval) where both routes answered: each route's mean answer time."""
    canary = stats[
        (stats["role"] == "canary") & (stats["model_version"] == challenger) & (stats["attempts"] > 0)
    ]
    base = stats[
        (stats["role"] == "champion") & (stats["model_version"] == champion) & (stats["attempts"] > 0)
    ]
    joined = canary.merge(base, on=["replica", "window_start"], suffixes=("_canary", "_champion"))
    return [
        LatencyCluster(
            row.latency_sum_s_canary / row.attempts_canary, row.latency_sum_s_champion / row.attempts_champion
        )
        for row in joined.itertuples()
    ]


def evidence_of(
    state: LiveState,
    champion: str,
    labelled: pd.DataFrame,
    stats: pd.DataFrame,
    now: datetime,
    policy: LiveSettings,
    *,
    canary_wanted: bool,
    unlabelled: Mapping[str, Any] | None = None,
) -> LiveEvidence:
    """The live evidence of one challenger from the log's frames (``adapters.live_log``)."""
    challenger = state.version
    pairs = LabelledPairs(
        labelled[live_log.LABEL].to_numpy(dtype=np.int64),
        labelled[live_log.CHAMPION_PROBA].to_numpy(dtype=np.float64),
        labelled[live_log.CHALLENGER_PROBA].to_numpy(dtype=np.float64),
    )
    shadow = stats[(stats["role"] == "shadow") & (stats["model_version"] == challenger)]
    since = state.since or now
    base: dict[str, Any] = {
        "state": state.state,
        "elapsed_s": max(0.0, (now - since).total_seconds()),
        "labelled": live.judge_labelled(pairs, policy),
        "shadow_errors": live.judge_errors("shadow", _failures(shadow), _sum(shadow, "attempts"), policy),
        "canary_wanted": canary_wanted,
        "unlabelled": dict(unlabelled or {}),
    }
    if state.state != live.CANARY:
        return LiveEvidence(**base)
    step_since = state.canary_since or since
    in_step = stats[stats["window_end"] > pd.Timestamp(step_since)]
    canary = in_step[(in_step["role"] == "canary") & (in_step["model_version"] == challenger)]
    return LiveEvidence(
        **base,
        canary_errors=live.judge_errors("canary", _failures(canary), _sum(canary, "attempts"), policy),
        latency=live.judge_latency(latency_clusters(in_step, challenger, champion), policy),
        canary_step=state.canary_step or 0,
        step_elapsed_s=max(0.0, (now - step_since).total_seconds()),
        step_requests=_sum(canary, "attempts"),
    )


def unlabelled_summary(
    recent: pd.DataFrame,
    stats: pd.DataFrame,
    challenger: str,
    references: Mapping[str, pd.DataFrame | None],
) -> dict[str, Any]:
    """Label-free comparisons on the same requests: agreement, score distributions, CBPE, shadow time."""
    summary: dict[str, Any] = {"requests": len(recent)}
    shadow = stats[(stats["role"] == "shadow") & (stats["model_version"] == challenger)]
    attempts = _sum(shadow, "attempts")
    if attempts:
        summary["challenger_shadow_ms_per_row"] = round(
            1000 * float(shadow["latency_sum_s"].sum()) / attempts, 4
        )
    summary["shed_rows"] = _sum(shadow, "shed")
    if not len(recent):
        return summary
    sides = {
        "champion": (live_log.CHAMPION_PROBA, live_log.CHAMPION_PREDICTION),
        "challenger": (live_log.CHALLENGER_PROBA, live_log.CHALLENGER_PREDICTION),
    }
    summary["agreement"] = round(
        float((recent[live_log.CHAMPION_PREDICTION] == recent[live_log.CHALLENGER_PREDICTION]).mean()), 4
    )
    for side, (proba, predicted) in sides.items():
        values = recent[proba].to_numpy(dtype=np.float64)
        summary[f"{side}_positive_rate"] = round(float(recent[predicted].mean()), 4)
        summary[f"{side}_probability_p10_p50_p90"] = [
            round(float(q), 4) for q in np.quantile(values, [0.1, 0.5, 0.9])
        ]
        reference = references.get(side)
        if reference is None:
            summary[f"{side}_cbpe"] = "no reference set"
            continue
        try:
            estimates = estimate_whole(reference, values, recent[predicted].to_numpy(dtype=np.int64))
        except Exception as exc:  # a label-free view for people: never a reason to fail the gate
            summary[f"{side}_cbpe"] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
            continue
        summary[f"{side}_cbpe"] = {
            metric: round(e.value, 4) for metric, e in estimates.items()
        } or "too few rows"
    return summary


# --- reading the registry and the log ---------------------------------------------------------------------
@dataclass(frozen=True)
class Observed:
    """What the live gate read for one challenger: the frames and the evidence built from them."""

    state: LiveState
    champion: str
    labelled: pd.DataFrame
    recent: pd.DataFrame
    evidence: LiveEvidence


def _reference(client: MlflowClient, version: ModelVersion) -> pd.DataFrame | None:
    try:
        return registry.load_reference(client, version)
    except Exception as exc:  # a hand-registered version may have none: CBPE is then not shown
        logger.warning("version %s: no reference set for CBPE (%s)", version.version, exc)
        return None


@task(cache_policy=NO_CACHE)
def observe(
    settings: Settings, client: MlflowClient, challenger: ModelVersion, champion: ModelVersion, now: datetime
) -> Observed:
    """Both models' answers on the same live requests, the replicas' counts, and the evidence."""
    state = live_state.read(challenger)
    since = state.since or now
    url = settings.prediction_log_url
    engine = make_engine("sqlite://" if missing_sqlite_file(url) else url)
    try:
        versions = (state.version, str(champion.version))
        labelled = live_log.labelled_pairs(
            engine, versions[1], versions[0], since, now - timedelta(seconds=settings.live.settle_s)
        )
        recent = live_log.recent_pairs(engine, versions[1], versions[0], since, RECENT_ROWS)
        stats = live_log.stats(engine, versions, since)
    finally:
        engine.dispose()
    references = {"champion": _reference(client, champion), "challenger": _reference(client, challenger)}
    wanted = settings.live.policy == live.CANARY and not state.canary_held
    evidence = evidence_of(
        state,
        versions[1],
        labelled,
        stats,
        now,
        settings.live,
        canary_wanted=wanted,
        unlabelled=unlabelled_summary(recent, stats, state.version, references),
    )
    return Observed(state, versions[1], labelled, recent, evidence)


# --- what the gate publishes and records ------------------------------------------------------------------
def evidence_record(evidence: LiveEvidence, action: live.LiveAction, policy: LiveSettings) -> dict[str, Any]:
    """The live evidence as recorded in the decision (``Decision.live``) and its digest."""
    return {
        **evidence.to_dict(),
        "action": action.action,
        "reason": action.reason,
        "share": action.share,
        "planned_looks": list(live.planned_looks(policy)),
    }


def report(observed: Observed, record: Mapping[str, Any], policy: LiveSettings) -> str:
    """The Prefect artifact: the live comparison so far, and the plot of both models over time."""
    state = observed.state
    title = f"Live gate: challenger {state.version} vs champion {observed.champion}"
    lines = [f"# {title}", "", f"State: **{state.state}** since {state.since}.", ""]
    if state.state == live.CANARY:
        lines += [
            f"Canary step {state.canary_step} ({state.canary_share:.0%} of requests) "
            f"since {state.canary_since}.",
            "",
        ]
    lines += live_markdown(record)
    png = live_png(
        observed.labelled,
        observed.recent,
        observed.champion,
        state.version,
        live.planned_looks(policy),
        title,
    )
    image = base64.b64encode(png).decode()
    return "\n".join(lines) + f"\n\n![champion vs challenger on live rows](data:image/png;base64,{image})\n"


def _publish(markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=names.LIVE_ARTIFACT_KEY, description=description)


def _emit(event: str, model_name: str, version: str, payload: Mapping[str, Any]) -> None:
    prefect_events.emit(event, model_name, version, payload)


# --- applying the action ---------------------------------------------------------------------------------
def _decide_with_offline(
    settings: Settings,
    client: MlflowClient,
    key: SigningKey,
    challenger: ModelVersion,
    champion: ModelVersion,
    action: live.LiveAction,
    record: dict[str, Any],
    by: str,
) -> LiveOutcome:
    """Promote (when the offline gate still passes) or reject, recording both evidences."""
    model_name = settings.mlflow.model_name
    offline = promote.offline_decision(settings, client, challenger, champion)
    action = live.with_offline(action, offline.promote, offline.reason)
    record = {**record, "action": action.action, "reason": action.reason}
    outcome: Outcome = PROMOTED if action.action == live.PROMOTE else REJECTED
    decision = replace(offline, outcome=outcome, reason=f"live gate: {action.reason}", live=record)
    applied = promote.apply_decision(client, model_name, decision, by, key, action=promote.LIVE_GATE)
    live_state.end(
        client, model_name, str(challenger.version), live.CHAMPION if decision.promote else live.REJECTED
    )
    return LiveOutcome(action.action, str(challenger.version), applied.champion, action.reason, 0.0, record)


def _canary_policy(settings: Settings, share: float, step: int | None) -> dict[str, Any]:
    """A canary record's policy: the share every replica applies (``reggaeton.live.CANARY_SHARE``)."""
    return {live.CANARY_SHARE: share, live.CANARY_STEP: step, "promotion_policy": settings.live.policy}


def _canary_step(
    settings: Settings,
    client: MlflowClient,
    key: SigningKey,
    state: LiveState,
    champion: str | None,
    action: live.LiveAction,
    by: str,
    evidence: Mapping[str, Any],
) -> None:
    """Sign the canary's new share (what the replicas follow), then record its step."""
    model_name = settings.mlflow.model_name
    with decision_lock():
        promote.sign_live(
            client,
            key,
            model_name,
            state.version,
            action=promote.CANARY_STEP,
            outcome=live.CANARY,
            champion=champion,
            reason=action.reason,
            evidence=evidence,
            policy=_canary_policy(settings, action.share, action.step),
            by=by,
        )
        live_state.canary(client, model_name, state.version, action.step, action.share)
    payload = {"step": action.step, "share": action.share, "reason": action.reason, "decided_by": by}
    _emit(names.Event.CANARY_STEP, model_name, state.version, payload)
    logger.info(
        "version %s: canary at %.0f%% of requests: %s", state.version, action.share * 100, action.reason
    )


def _abort(
    settings: Settings,
    client: MlflowClient,
    key: SigningKey,
    state: LiveState,
    champion: str | None,
    reason: str,
    by: str,
    *,
    reject: bool,
    evidence: Mapping[str, Any] | None = None,
) -> None:
    """Share to 0 at once (signed); rejected (the gate's abort), or back to shadow (an operator's)."""
    model_name = settings.mlflow.model_name
    with decision_lock():
        promote.sign_live(
            client,
            key,
            model_name,
            state.version,
            action=promote.CANARY_STEP,
            outcome=REJECTED if reject else live.SHADOW,
            champion=champion,
            reason=f"canary aborted: {reason}",
            evidence=evidence or {"aborted": reason},
            policy=_canary_policy(settings, 0.0, None),
            by=by,
        )
        live_state.canary(client, model_name, state.version, None, 0.0)
        if reject:
            decisions.tag_decision(
                client, model_name, state.version, REJECTED, f"canary aborted: {reason}", decisions.stamp(by)
            )
            live_state.end(client, model_name, state.version, live.REJECTED)
        else:
            live_state.set_tags(client, model_name, state.version, {names.Tag.CANARY_HELD: "true"})
    payload = {"reason": reason, "decided_by": by, "rejected": reject, "step": state.canary_step}
    _emit(names.Event.CANARY_ABORTED, model_name, state.version, payload)
    logger.warning(
        "version %s: canary aborted (%s): %s", state.version, "rejected" if reject else "held", reason
    )


def judge(settings: Settings, by: str = promote.LIVE_GATE, *, apply: bool = True) -> LiveOutcome:
    """Judge the challenger under live evaluation once (tasks; call inside a flow).

    Args:
        settings: The settings (registry, prediction log, the live policy).
        by: Who decides, recorded on the versions.
        apply: False: only report what the gate would do (``reggaeton shadow``).
    """
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    model_name = settings.mlflow.model_name
    found = live_state.challenger(client, model_name)
    champion = registry.get_alias(client, model_name, names.CHAMPION)
    current = str(champion.version) if champion is not None else None
    if found is None or not found[1].under_evaluation:
        return LiveOutcome(
            NONE, found[1].version if found else None, current, "no challenger under live evaluation"
        )
    challenger, state = found
    if champion is None or current == state.version:
        if apply:
            live_state.end(
                client,
                model_name,
                state.version,
                live.CHAMPION if current == state.version else live.REJECTED,
            )
        return LiveOutcome(NONE, state.version, current, "the challenger is the champion, or there is none")
    key, trusted = promote.signing_keys(settings)
    problem = promote.unauthorized_champion_problem(client, model_name, trusted)
    if problem is not None:  # the API serves another champion than the alias says: nothing to compare with
        return LiveOutcome(NONE, state.version, current, f"not judging version {state.version}: {problem}")
    observed = observe(settings, client, challenger, champion, live_state.now())
    action = live.decide(observed.evidence, settings.live)
    record = evidence_record(observed.evidence, action, settings.live)
    logger.info("version %s: %s: %s", state.version, action.action, action.reason)
    if apply:
        _publish(report(observed, record, settings.live), f"{action.action}: version {state.version}")
    if not apply or action.action == live.WAIT:
        return LiveOutcome(action.action, state.version, current, action.reason, state.canary_share, record)
    if action.action in (live.START_CANARY, live.ADVANCE_CANARY):
        _canary_step(settings, client, key, state, current, action, by, record)
        return LiveOutcome(action.action, state.version, current, action.reason, action.share, record)
    if action.action == live.ABORT_CANARY:
        _abort(settings, client, key, state, current, action.reason, by, reject=True, evidence=record)
        return LiveOutcome(action.action, state.version, current, action.reason, 0.0, record)
    return _decide_with_offline(settings, client, key, challenger, champion, action, record, by)


@flow(name=names.LIVE_GATE_FLOW)
def live_gate(settings: Settings | None = None) -> dict[str, Any]:
    """Judge the challenger under live evaluation: wait, promote, reject, or move its canary a step."""
    settings = settings or Settings()
    return _jsonable(asdict(judge(settings)))


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return result


# --- operator commands ------------------------------------------------------------------------------------
def _told(outcome: LiveOutcome) -> dict[str, Any]:
    """An operator command's result, its lines logged first (what ``reggaeton`` prints)."""
    result = asdict(outcome)
    log_outcome(live_lines(result))
    return result


def live_report(settings: Settings) -> dict[str, Any]:
    """What the challenger under live evaluation has seen, and what the live gate would do now."""
    return _jsonable(asdict(judge(settings, apply=False)))


def report_lines(report: Mapping[str, Any], settings: Settings) -> list[str]:
    """``live_report``'s answer for a terminal (``reggaeton shadow``)."""
    policy = settings.live.policy
    evidence = report.get("evidence")
    if not evidence:
        return [
            f"policy {policy}: {report['reason']}"
            + (f" (challenger {report['version']})" if report.get("version") else "")
        ]
    labelled = evidence["labelled"]
    lines = [
        f"challenger version {report['version']} vs champion version {report['champion']}: "
        f"{evidence['state']} for {evidence['elapsed_s']:.0f} s (policy {policy})",
        f"the live gate now: {report['action']}: {report['reason']}",
        f"labelled live rows: {labelled['rows']}, positives {labelled['positives']} "
        f"(looks at {', '.join(str(n) for n in live.planned_looks(settings.live))} positives)",
    ]
    for look in labelled.get("looks") or ():
        gain = look["gain"]
        lines.append(
            f"  look at {look['positives']} positives: PR-AUC gain {gain['estimate']:+.4f} "
            f"[{gain['low']:+.4f}, {gain['high']:+.4f}]: {look['verdict']}"
        )
    for key in ("shadow_errors", "canary_errors"):
        errors = evidence.get(key)
        if errors:
            lines.append(f"{key.split('_')[0]}: {errors['errors']} errors of {errors['attempts']} answers")
    if evidence.get("latency") and evidence["latency"].get("difference_ms"):
        d = evidence["latency"]["difference_ms"]
        lines.append(
            f"canary answer time vs champion: {d['estimate']:+.1f} ms [{d['low']:+.1f}, {d['high']:+.1f}]"
        )
    unlabelled = evidence.get("unlabelled") or {}
    lines.append("label-free, on the same requests:")
    lines.extend(f"  {key.replace('_', ' ')}: {value}" for key, value in unlabelled.items())
    return lines


@flow(name=names.LIVE_REPORT_DEPLOYMENT)
def live_report_flow(settings: Settings | None = None) -> dict[str, Any]:
    """``reggaeton shadow`` on a container stack's worker: ``live_report`` with its lines logged."""
    settings = settings or Settings()
    report = live_report(settings)
    log_outcome(report_lines(report, settings))
    return report


@flow(name=names.CANARY_START_DEPLOYMENT)
def canary_start(by: str | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Operator command: the challenger under live evaluation answers the first canary step's share.

    Raises:
        LiveGateError: no challenger under live evaluation, or its canary is already running.
    """
    settings = settings or Settings()
    by = by or decisions.operator_name()
    key, _ = promote.signing_keys(settings)
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    found = live_state.challenger(client, settings.mlflow.model_name)
    if found is None or not found[1].under_evaluation:
        raise LiveGateError(
            "no challenger is under live evaluation (live.policy shadow or canary starts one)"
        )
    state = found[1]
    if state.state == live.CANARY:
        raise LiveGateError(f"version {state.version}'s canary is already at {state.canary_share:.0%}")
    share = settings.live.canary_steps[0]
    action = live.LiveAction(live.START_CANARY, f"started by {by}", share=share, step=0)
    champion = _champion_version(client, settings)
    _canary_step(settings, client, key, state, champion, action, by, {"started_by": by})
    live_state.set_tags(client, settings.mlflow.model_name, state.version, {names.Tag.CANARY_HELD: None})
    return _told(LiveOutcome(live.START_CANARY, state.version, None, action.reason, share))


@flow(name=names.CANARY_ABORT_DEPLOYMENT)
def canary_abort(reason: str, by: str | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Operator command: the canary's share goes to 0 at once; the challenger keeps shadowing.

    Raises:
        LiveGateError: no canary is running.
    """
    settings = settings or Settings()
    by = by or decisions.operator_name()
    key, _ = promote.signing_keys(settings)
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    found = live_state.challenger(client, settings.mlflow.model_name)
    if found is None or found[1].state != live.CANARY:
        raise LiveGateError("no canary is running")
    state = found[1]
    champion = _champion_version(client, settings)
    _abort(settings, client, key, state, champion, f"{reason} (by {by})", by, reject=False)
    return _told(LiveOutcome(live.ABORT_CANARY, state.version, None, reason, 0.0))


def _champion_version(client: MlflowClient, settings: Settings) -> str | None:
    found = registry.get_alias(client, settings.mlflow.model_name, names.CHAMPION)
    return None if found is None else str(found.version)


@flow(name=names.SHADOW_START_DEPLOYMENT)
def shadow_start(
    version: str, reason: str, by: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Operator command: put a registered version under live evaluation without the offline gate.

    Like ``reggaeton promote`` for the champion: the version must still load and pass the servability
    rule; it is recorded and signed as the operator's decision, with why. The live gate then judges it
    like any other challenger (the offline gate must pass for a promotion all the same).

    Raises:
        LiveGateError: the version is the champion, or is not servable.
    """
    settings = settings or Settings()
    by = by or decisions.operator_name()
    version = str(version)
    key, _ = promote.signing_keys(settings)
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    model_name = settings.mlflow.model_name
    champion = _champion_version(client, settings)
    if champion == version:
        raise LiveGateError(f"version {version} is the champion")
    _, problems = gate.load_checked(model_name, version)
    if problems:
        raise LiveGateError(f"refusing to shadow version {version}: {'; '.join(problems)}")
    why = f"put under live evaluation by {by}: {reason}"
    with decision_lock():
        promote.sign_live(
            client,
            key,
            model_name,
            version,
            action=promote.MANUAL,
            outcome=live.SHADOW,
            champion=champion,
            reason=why,
            evidence={"reason": reason, "valid": True},
            policy={"promotion_policy": settings.live.policy},
            by=by,
        )
        decisions.tag_decision(client, model_name, version, live.SHADOW, why, decisions.stamp(by))
        live_state.begin(client, model_name, version, live_state.now())
    _emit(
        names.Event.SHADOW_STARTED,
        model_name,
        version,
        {"action": promote.MANUAL, "decided_by": by, "reason": reason},
    )
    return _told(LiveOutcome(live.SHADOW, version, champion, why))
