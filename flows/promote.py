"""Champion/challenger promotion: the gate flows and the operator commands.

Applying a decision writes its signed decision record (``reggaeton.decision_record``) on the version it
decides about, tags both versions and moves the ``champion`` alias on a promote (``adapters.decisions``),
all under the decision lock; then it emits ``reggaeton.model.promoted`` / ``reggaeton.model.rejected``
and publishes a markdown artifact. Re-running the gate on the same pair and the same evaluation data
changes nothing. The API serves a champion only with a valid record: the alias moved any other way is
not served.

Under the live policies (``live.policy`` shadow or canary) a challenger the offline gate would promote
is not promoted at once: it goes under live evaluation (``start_live_evaluation``: a signed record with
outcome ``shadow``, which the API replicas follow) and the ``live-gate`` deployment
(``flows/live_gate.py``) decides it on live traffic. A challenger the offline gate rejects is rejected as
before, and without a champion there is nothing to compare live with: the offline gate decides.

Operator commands (each recorded with who and why, and announced with an event) run from the command
line: ``reggaeton train --gate``, ``reggaeton gate``, ``reggaeton promote``, ``reggaeton rollback``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from adapters import decisions, keys, live_state, prefect_events, registry
from adapters.prefect_api import decision_lock
from flows import gate, train
from flows.outcome import challenger_line, decision_lines, log_outcome
from reggaeton import decision_record, live, names
from reggaeton.decision_record import RecordError, SigningKey, VerifyKeys
from reggaeton.promotion import (
    PROMOTED,
    REJECTED,
    Decision,
    decide,
    markdown_report,
    slice_lines,
    slice_markdown,
)
from reggaeton.settings import Settings
from reggaeton.slice_figure import slices_figure

logger = logging.getLogger(__name__)

UNCHANGED: Final = "unchanged"  # outcome of a run that found the decision already made
GATE_ARTIFACTS: Final = "gate"  # folder of the decision's files on the challenger's training run

GATE: Final = decision_record.GATE
MANUAL: Final = decision_record.MANUAL
ROLLBACK: Final = decision_record.ROLLBACK
LIVE_GATE: Final = decision_record.LIVE_GATE
CANARY_STEP: Final = decision_record.CANARY_STEP
OFFLINE: Final = "offline"  # the promotion policy that decides on the offline gate alone
DEGRADED: Final = "degraded"  # train_and_promote's reason when the champion degraded (the trigger's)


class PromotionError(RuntimeError):
    """An operator command or a decision that cannot be applied (stale, invalid, nothing to roll back)."""


@dataclass(frozen=True)
class Outcome:
    """What a gate run or an operator command did to the registry."""

    action: str  # gate | manual | rollback
    outcome: str  # promoted | rejected | unchanged
    version: str  # the version decided about (the challenger, or the one restored)
    champion: str | None  # the champion afterwards
    reason: str
    changed: bool
    slices: tuple[dict[str, Any], ...] = ()  # the gate's slice evidence (Decision.to_dict()["slices"])


def _emit(event: str, model_name: str, version: str, payload: Mapping[str, Any]) -> None:
    prefect_events.emit(event, model_name, version, payload)


def _publish(markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=names.PROMOTION_ARTIFACT_KEY, description=description)


def _slices_png(decision: Decision) -> bytes:
    """The slices plot of a decision as PNG bytes."""
    record = decision.to_dict()
    figure = slices_figure(record["slices"], decision.champion_version, decision.challenger_version)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def decision_report(decision: Decision, png: bytes | None) -> str:
    """The Prefect artifact: the decision's tables, and the slices plot inline."""
    markdown = markdown_report(decision)
    if png is None:
        return markdown
    image = base64.b64encode(png).decode()
    return f"{markdown}\n![PR-AUC per slice, both models, with intervals](data:image/png;base64,{image})\n"


def signing_keys(settings: Settings) -> tuple[SigningKey, VerifyKeys]:
    """The key this side signs with, and the keys it trusts when it reads earlier records.

    Raises:
        PromotionError: no usable signing key (the message names the setting).
    """
    try:
        key = keys.signing_key(settings)
    except keys.KeyUnavailable as exc:
        raise PromotionError(str(exc)) from exc
    return key, keys.decider_keys(settings, key)


def _authorized(version: ModelVersion | None, trusted: VerifyKeys, model_name: str) -> bool:
    if version is None:
        return False
    try:
        decisions.authorizing_record(version, trusted, model_name)
    except RecordError:
        return False
    return True


def unauthorized_champion_problem(client: MlflowClient, model_name: str, trusted: VerifyKeys) -> str | None:
    """Why the champion alias cannot be decided against (it points at an undecided version), or None."""
    champion = registry.get_alias(client, model_name, names.CHAMPION)
    if champion is None or _authorized(champion, trusted, model_name):
        return None
    last = decisions.latest_authorized(client, model_name, trusted)
    served = f"version {last[0].version}" if last is not None else "no version"
    return (
        f"the champion alias points at version {champion.version}, which no signed decision made champion "
        f"(the API keeps serving {served}): `reggaeton promote --version {champion.version}` accepts it, "
        "`reggaeton rollback` goes back to the last decided champion"
    )


def _signed(client: MlflowClient, key: SigningKey, **fields: Any) -> decision_record.DecisionRecord:
    try:
        return decisions.sign_decision(client, key, **fields)
    except RecordError as exc:
        raise PromotionError(f"cannot write the decision record: {exc}") from exc


def _operator_record(
    client: MlflowClient,
    key: SigningKey,
    model_name: str,
    version: str,
    action: str,
    previous: str | None,
    evidence: Mapping[str, Any],
    why: str,
    stamp: Mapping[str, str],
) -> decision_record.DecisionRecord:
    """The signed record of an operator's promote or rollback: no evaluation data, no gate policy."""
    return _signed(
        client,
        key,
        model=model_name,
        version=version,
        action=action,
        outcome=PROMOTED,
        previous_champion=previous,
        evaluation=None,
        evidence=decision_record.evidence_of(evidence, why),
        policy={},
        decided_by=stamp[names.Tag.DECIDED_BY],
        decided_at=stamp[names.Tag.DECIDED_AT],
    )


def apply_decision(
    client: MlflowClient,
    model_name: str,
    decision: Decision,
    by: str,
    key: SigningKey,
    action: str = GATE,
) -> Outcome:
    """Sign and record a decision, tag both versions, move the alias on a promote; then tell Prefect.

    ``action``: the offline gate's decision, or the live gate's (``LIVE_GATE``: with live evidence).

    Raises:
        PromotionError: the champion moved since the decision was made (the decision is stale).
    """
    record = decision.to_dict()
    with decision_lock():
        _apply_decision(client, model_name, decision, by, key, record, action)
    champion = decision.challenger_version if decision.promote else decision.champion_version
    _emit(
        names.Event.PROMOTED if decision.promote else names.Event.REJECTED,
        model_name,
        decision.challenger_version,
        {"action": action, "decided_by": by, **record},
    )
    png = _slices_png(decision) if decision.slices else None
    _publish(decision_report(decision, png), f"{decision.outcome}: version {decision.challenger_version}")
    _log_decision_files(client, model_name, decision, record, png)
    logger.info("version %s %s: %s", decision.challenger_version, decision.outcome, decision.reason)
    for line in slice_lines(record["slices"]):
        logger.info("  %s", line)
    return Outcome(
        action,
        decision.outcome,
        decision.challenger_version,
        champion,
        decision.reason,
        True,
        tuple(record["slices"]),
    )


def _apply_decision(
    client: MlflowClient,
    model_name: str,
    decision: Decision,
    by: str,
    key: SigningKey,
    evidence: dict[str, Any],
    action: str = GATE,
) -> None:
    current = registry.get_alias(client, model_name, names.CHAMPION)
    current_version = str(current.version) if current is not None else None
    if current_version != decision.champion_version:
        raise PromotionError(
            f"champion is version {current_version}, but the decision was made against "
            f"{decision.champion_version}; re-run the gate"
        )
    stamp = decisions.stamp(by)
    _signed(
        client,
        key,
        model=model_name,
        version=decision.challenger_version,
        action=action,
        outcome=decision.outcome,
        previous_champion=decision.champion_version,
        evaluation=decision.evaluation,
        evidence=decision_record.evidence_of(evidence, decision.reason),
        policy=decision.policy,
        decided_by=by,
        decided_at=stamp[names.Tag.DECIDED_AT],
    )
    decisions.tag_decision(
        client,
        model_name,
        decision.challenger_version,
        decision.outcome,
        decision.reason,
        stamp,
        {
            names.Tag.DECISION_AGAINST: decision.champion_version or "none",
            names.Tag.DECISION_DATA: decision.evaluation,
            names.Tag.DECISION_DETAIL: json.dumps(evidence, separators=(",", ":")),
        },
        notes="\n".join(["### Slices", "", *slice_markdown(evidence["slices"])]) if decision.slices else None,
    )
    if decision.champion_version is not None:
        decisions.tag_decision(
            client,
            model_name,
            decision.champion_version,
            decisions.REPLACED if decision.promote else decisions.RETAINED,
            f"challenger version {decision.challenger_version} {decision.outcome}: {decision.reason}",
            stamp,
        )
    if decision.promote:
        decisions.move_champion(client, model_name, decision.challenger_version, decision.champion_version)


def _log_decision_files(
    client: MlflowClient, model_name: str, decision: Decision, record: dict[str, Any], png: bytes | None
) -> None:
    """The decision's report, record and slices plot on the challenger's training run (``gate/``).

    A view of what the tags already hold: a failure is logged, never a reason to undo the decision.
    """
    against = decision.champion_version or "none"
    files: dict[str, bytes] = {
        f"decision-vs-{against}.md": markdown_report(decision).encode(),
        f"decision-vs-{against}.json": json.dumps(record, indent=2).encode(),
    }
    if png is not None:
        files[f"slices-vs-{against}.png"] = png
    try:
        registry.log_version_files(client, model_name, decision.challenger_version, GATE_ARTIFACTS, files)
    except Exception as error:
        logger.warning("the decision's files were not logged to MLflow: %s", error)


def sign_live(
    client: MlflowClient,
    key: SigningKey,
    model_name: str,
    version: str,
    *,
    action: str,
    outcome: str,
    champion: str | None,
    reason: str,
    evidence: Mapping[str, Any],
    policy: Mapping[str, Any],
    by: str,
    evaluation: str | None = None,
) -> decision_record.DecisionRecord:
    """A signed record of a live-evaluation step about ``version`` (call under the decision lock).

    Outcome ``shadow`` (scored beside the champion) or ``canary`` (``policy["canary_share"]`` of the
    requests answered by it): what every API replica follows; ``rejected``: the replicas stop.
    """
    return _signed(
        client,
        key,
        model=model_name,
        version=version,
        action=action,
        outcome=outcome,
        previous_champion=champion,
        evaluation=evaluation,
        evidence=decision_record.evidence_of(evidence, reason),
        policy=policy,
        decided_by=by,
        decided_at=decisions.now(),
    )


def start_live_evaluation(
    settings: Settings, client: MlflowClient, decision: Decision, by: str, key: SigningKey
) -> Outcome:
    """Put a challenger the offline gate passed under live evaluation instead of promoting it.

    Its offline evidence is recorded on it (the live gate's final decision records it again, with the
    live evidence) in a signed record with outcome ``shadow``: the replicas start shadow-scoring it at
    their next poll; ``shadow_started`` tells.
    """
    model_name = settings.mlflow.model_name
    version = decision.challenger_version
    reason = (
        f"passed the offline gate ({decision.reason}); under live evaluation (policy "
        f"{settings.live.policy}): the live-gate deployment decides it on live traffic"
    )
    evidence = decision.to_dict()
    with decision_lock():
        current = registry.get_alias(client, model_name, names.CHAMPION)
        if (str(current.version) if current is not None else None) != decision.champion_version:
            raise PromotionError(f"the champion moved while version {version} was gated; re-run the gate")
        sign_live(
            client,
            key,
            model_name,
            version,
            action=GATE,
            outcome=live.SHADOW,
            champion=decision.champion_version,
            reason=reason,
            evidence=evidence,
            policy={"promotion_policy": settings.live.policy, **decision.policy},
            by=by,
            evaluation=decision.evaluation,
        )
        decisions.tag_decision(
            client,
            model_name,
            version,
            live.SHADOW,
            reason,
            decisions.stamp(by),
            {
                names.Tag.DECISION_AGAINST: decision.champion_version or "none",
                names.Tag.DECISION_DATA: decision.evaluation,
                names.Tag.DECISION_DETAIL: json.dumps(evidence, separators=(",", ":")),
            },
        )
        live_state.begin(client, model_name, version, live_state.now())
    payload = {
        "action": GATE,
        "decided_by": by,
        "policy": settings.live.policy,
        "champion_version": decision.champion_version,
        "offline_reason": decision.reason,
    }
    _emit(names.Event.SHADOW_STARTED, model_name, version, payload)
    _publish(
        markdown_report(decision, title=f"Under live evaluation (policy {settings.live.policy})"),
        f"shadow: version {version}",
    )
    logger.info("version %s: %s", version, reason)
    return Outcome(GATE, live.SHADOW, version, decision.champion_version, reason, True)


def offline_decision(
    settings: Settings,
    client: MlflowClient,
    challenger: ModelVersion,
    champion: ModelVersion | None,
    holdout: pd.DataFrame | None = None,
) -> Decision:
    """The offline gate's decision now, slices included: both versions scored on the same rows (tasks)."""
    model_name = settings.mlflow.model_name
    frame = load_evaluation(settings, client, challenger, holdout, champion)
    challenger_scores = score(model_name, str(challenger.version), frame)
    champion_scores = score(model_name, str(champion.version), frame) if champion is not None else None
    return decide(
        champion_scores,
        challenger_scores,
        settings.promotion,
        overall=gate.overall_rows(frame),
        slices=gate.slice_rows(frame, settings.promotion),
    )


@task(cache_policy=NO_CACHE)
def load_evaluation(
    settings: Settings,
    client: MlflowClient,
    challenger: ModelVersion,
    holdout: pd.DataFrame | None,
    champion: ModelVersion | None,
) -> pd.DataFrame:
    """The held-out rows, labelled traffic the challenger has not seen, and the slices' extra rows."""
    return gate.load_evaluation(settings, client, challenger, holdout, champion)


@task(cache_policy=NO_CACHE)
def score(model_name: str, version: str, frame: pd.DataFrame) -> gate.ModelScores:
    """Validity, probabilities and latency of one version on the evaluation data."""
    return gate.score_version(model_name, version, frame)


@task(cache_policy=NO_CACHE)
def record(client: MlflowClient, model_name: str, decision: Decision, by: str, key: SigningKey) -> Outcome:
    """Apply the decision to the registry and tell Prefect."""
    return apply_decision(client, model_name, decision, by, key)


@task(cache_policy=NO_CACHE)
def start_live(
    settings: Settings, client: MlflowClient, decision: Decision, by: str, key: SigningKey
) -> Outcome:
    """Put the challenger under live evaluation (policy shadow or canary) instead of promoting it."""
    return start_live_evaluation(settings, client, decision, by, key)


def run_gate(
    settings: Settings, version: str, holdout: pd.DataFrame | None = None, by: str = GATE
) -> Outcome:
    """Gate one registered version against the champion (tasks; call inside a flow).

    Args:
        settings: The settings (registry, prediction log, promotion policy).
        version: The challenger's registered version.
        holdout: Its held-out rows with the target; None reads its reference set.
        by: Who decides, recorded on the versions.
    """
    version = str(version)
    key, trusted = signing_keys(settings)
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    model_name = settings.mlflow.model_name
    challenger = client.get_model_version(model_name, version)
    champion = registry.get_alias(client, model_name, names.CHAMPION)
    problem = unauthorized_champion_problem(client, model_name, trusted)
    if problem is not None:
        # The gate compares with the champion the API serves; an alias moved by hand is not that one.
        raise PromotionError(f"not gating version {version}: {problem}")
    current = str(champion.version) if champion is not None else None
    if live_state.read(challenger).under_evaluation:
        why = f"version {version} is under live evaluation: the live gate decides it"
        return Outcome(GATE, UNCHANGED, version, current, why, False)
    frame = load_evaluation(settings, client, challenger, holdout, champion)
    nothing_to_do = decisions.already_decided(challenger, champion, gate.evaluation_hash(frame))
    if nothing_to_do is not None:
        logger.info("nothing to do: %s", nothing_to_do)
        return Outcome(GATE, UNCHANGED, version, current, nothing_to_do, False)
    challenger_scores = score(model_name, version, frame)
    champion_scores = score(model_name, str(champion.version), frame) if champion is not None else None
    decision = decide(
        champion_scores,
        challenger_scores,
        settings.promotion,
        overall=gate.overall_rows(frame),
        slices=gate.slice_rows(frame, settings.promotion),
    )
    if decision.promote and champion is not None and settings.live.policy != OFFLINE:
        return start_live(settings, client, decision, by, key)
    return record(client, model_name, decision, by, key)


def _told(result: Outcome, *before: str) -> dict[str, Any]:
    """The flow's result, its outcome lines logged first (what ``reggaeton`` prints)."""
    record = asdict(result)
    log_outcome([*before, *decision_lines(record)])
    return record


@flow(name="promotion-gate")
def promotion_gate(version: str, settings: Settings | None = None) -> dict[str, Any]:
    """Gate a registered version against the champion on its held-out rows plus unseen labelled traffic."""
    settings = settings or Settings()
    return _told(run_gate(settings, version))


@flow(name="train-and-promote")
def train_and_promote(
    data_folder: str | None = None,
    n_trials: int | None = None,
    settings: Settings | None = None,
    request_id: str | None = None,
    parallel_workers: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Train and register a challenger, then gate it against the champion on the same evaluation data.

    Under a live policy, no retrain starts while a challenger is under live evaluation, unless the
    champion itself degraded (``reason="degraded"``, what the retrain automation passes): that challenger
    is then superseded (rejected) and the new one is evaluated in its place.

    Args:
        data_folder: Folder in the original CSV layout (default: the settings' data source).
        n_trials: Optuna trials (default: from the settings).
        settings: The settings (default: from the environment).
        request_id: The retrain request this run serves. A rerun of a crashed run passes the crashed
            run's request (the rerun automation does), so a version that run registered is gated, not
            trained and registered a second time. Default: this flow run's id, a new request.
        parallel_workers: Tuning runs on the tuning pool (default: ``training.parallel_workers``).
        reason: Why it runs: ``degraded`` (the automation), else a schedule or a person.
    """
    settings = train.with_overrides(settings or Settings(), data_folder, n_trials, parallel_workers)
    waiting = live_challenger_blocks(settings, reason)
    if waiting is not None:
        return _told(waiting)
    request = request_id or str(flow_run.id)
    version = train.resume_task(settings, request)
    if version is None:
        version = str(train.train_flow(settings=settings, request_id=request))
    return _told(run_gate(settings, version), challenger_line(version))


def live_challenger_blocks(settings: Settings, reason: str | None) -> Outcome | None:
    """Why no retrain starts now (a challenger under live evaluation), or None; supersedes it on degraded."""
    if settings.live.policy == OFFLINE:
        return None
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    model_name = settings.mlflow.model_name
    found = live_state.challenger(client, model_name)
    if found is None or not found[1].under_evaluation:
        return None
    version = found[1].version
    champion = registry.get_alias(client, model_name, names.CHAMPION)
    current = str(champion.version) if champion is not None else None
    if reason != DEGRADED:
        why = f"version {version} is under live evaluation; a retrain waits for its decision"
        logger.info("no retrain: %s", why)
        return Outcome(GATE, UNCHANGED, version, current, why, False)
    why = "superseded: the champion degraded, and a new retrain replaces this challenger"
    key, _ = signing_keys(settings)
    with decision_lock():
        sign_live(
            client,
            key,
            model_name,
            version,
            action=LIVE_GATE,
            outcome=REJECTED,
            champion=current,
            reason=why,
            evidence={"superseded": version, "champion": current},
            policy={"promotion_policy": settings.live.policy},
            by=LIVE_GATE,
        )
        decisions.tag_decision(client, model_name, version, REJECTED, why, decisions.stamp(LIVE_GATE))
        live_state.end(client, model_name, version, live.REJECTED)
    logger.info("version %s %s", version, why)
    return None


@flow(name="promote-version")
def promote_version(
    version: str, reason: str, by: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Operator command: make a version champion without the statistical gate (it must still be valid).

    Signed and recorded like a gate decision. The version the alias already points at is signed too
    when no valid record makes it champion (an alias moved by hand, accepted by the operator).

    Raises:
        PromotionError: the version does not load, predict on the examples or match the signature.
    """
    return _told(
        _promote_version(str(version), reason, by or decisions.operator_name(), settings or Settings())
    )


def _promote_version(version: str, reason: str, by: str, settings: Settings) -> Outcome:
    """The promotion itself (see ``promote_version``)."""
    key, trusted = signing_keys(settings)
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    model_name = settings.mlflow.model_name
    current = registry.get_alias(client, model_name, names.CHAMPION)
    old = str(current.version) if current is not None else None
    # Already champion by a decision signed with this key: nothing to do. Signed with another trusted key
    # (a key rotation), or not at all (a hand-moved alias the operator accepts): signed again, now.
    if old == version and _authorized(current, VerifyKeys.of([key.public]), model_name):
        return Outcome(MANUAL, UNCHANGED, version, old, f"version {version} is already champion", False)
    _, problems = gate.load_checked(model_name, version)
    if problems:
        raise PromotionError(f"refusing to promote version {version}: {'; '.join(problems)}")
    # Overriding the gate (e.g. a slice it blocked on) is said where the promotion is recorded.
    said = client.get_model_version(model_name, version).tags or {}
    overrides = (
        f"the gate's rejection ({said.get(names.Tag.DECISION_REASON, '')})"
        if said.get(names.Tag.DECISION) == REJECTED
        else None
    )
    why = f"manual promotion: {reason}" + (f"; overrides {overrides}" if overrides else "")
    with decision_lock():
        previous = _rollback_target(client, model_name, trusted, current, version)
        stamp = decisions.stamp(by)
        evidence = {"reason": reason, "valid": True, **({"overrides": overrides} if overrides else {})}
        _operator_record(client, key, model_name, version, MANUAL, old, evidence, why, stamp)
        decisions.tag_decision(client, model_name, version, PROMOTED, why, stamp)
        if old is not None and old != version:
            decisions.tag_decision(
                client, model_name, old, decisions.REPLACED, f"version {version} {why}", stamp
            )
        decisions.move_champion(client, model_name, version, previous)
    payload = {"action": MANUAL, "version": version, "previous": old, "reason": reason, "decided_by": by}
    if overrides:
        payload["overrides"] = overrides
    _emit(names.Event.PROMOTED, model_name, version, payload)
    _publish(_operator_report("Manual promotion", payload), f"manual promotion of version {version}")
    return Outcome(MANUAL, PROMOTED, version, version, why, True)


def _rollback_target(
    client: MlflowClient, model_name: str, trusted: VerifyKeys, current: ModelVersion | None, new: str
) -> str | None:
    """What a later rollback from ``new`` returns to: the champion a decision made, never a hand-moved one."""
    if current is not None and str(current.version) != new and _authorized(current, trusted, model_name):
        return str(current.version)
    last = decisions.latest_authorized(client, model_name, trusted)
    if last is not None and str(last[0].version) != new:
        return str(last[0].version)
    return None


@flow(name="rollback-champion")
def rollback(reason: str, by: str | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Operator command: make the previous champion champion again.

    When the alias was moved by hand (no decision made its version champion), the rollback goes back
    to the last champion a decision made.

    Raises:
        PromotionError: there is no champion, or it records no previous champion.
    """
    return _told(_rollback(reason, by or decisions.operator_name(), settings or Settings()))


def _drop_previous_alias(client: MlflowClient, model_name: str) -> None:
    """Remove the ``previous-champion`` alias: the restored champion has no earlier one.

    The alias is a view for the UI (a rollback reads the champion's tags). Deleting an alias needs MLflow's
    MANAGE permission and the container stacks' promotion account has EDIT (infra/accounts.py): there the
    alias stays, said in the run's log, and the rollback completes.
    """
    try:
        client.delete_registered_model_alias(model_name, names.PREVIOUS_CHAMPION)
    except MlflowException as error:
        logger.warning("the %s alias was left as it was: %s", names.PREVIOUS_CHAMPION, error)


def _rollback(reason: str, by: str, settings: Settings) -> Outcome:
    """The rollback itself (see ``rollback``)."""
    key, trusted = signing_keys(settings)
    client = registry.connect(settings, names.PROMOTION_ACCOUNT)
    model_name = settings.mlflow.model_name
    why = f"rollback: {reason}"
    with decision_lock():
        current = registry.get_alias(client, model_name, names.CHAMPION)
        if current is None:
            raise PromotionError("there is no champion to roll back")
        replaced = str(current.version)
        if _authorized(current, trusted, model_name):
            previous = (current.tags or {}).get(names.Tag.PREVIOUS_CHAMPION)
            if previous is None:
                raise PromotionError(f"champion version {replaced} records no previous champion")
        else:
            last = decisions.latest_authorized(client, model_name, trusted)
            if last is None:
                raise PromotionError(f"champion version {replaced} was never decided, and no version was")
            previous = str(last[0].version)
        restored = client.get_model_version(model_name, previous)
        stamp = decisions.stamp(by)
        evidence = {"reason": reason, "rolled_back": replaced}
        _operator_record(client, key, model_name, previous, ROLLBACK, replaced, evidence, why, stamp)
        decisions.tag_decision(client, model_name, replaced, decisions.ROLLED_BACK, why, stamp)
        decisions.tag_decision(client, model_name, previous, decisions.RESTORED, why, stamp)
        client.set_registered_model_alias(model_name, names.CHAMPION, previous)
        # The restored champion's own predecessor becomes the next rollback target.
        older = (restored.tags or {}).get(names.Tag.PREVIOUS_CHAMPION)
        if older is not None and older != previous:
            client.set_registered_model_alias(model_name, names.PREVIOUS_CHAMPION, older)
        elif registry.get_alias(client, model_name, names.PREVIOUS_CHAMPION) is not None:
            _drop_previous_alias(client, model_name)
    payload = {
        "action": ROLLBACK,
        "version": previous,
        "previous": replaced,
        "reason": reason,
        "decided_by": by,
    }
    _emit(names.Event.PROMOTED, model_name, previous, payload)
    _publish(_operator_report("Rollback", payload), f"rollback from version {replaced} to {previous}")
    return Outcome(ROLLBACK, PROMOTED, previous, previous, why, True)


def _operator_report(title: str, payload: Mapping[str, Any]) -> str:
    rows = [f"| {key} | {value} |" for key, value in payload.items()]
    return "\n".join([f"# {title}", "", "| field | value |", "|---|---|", *rows]) + "\n"
