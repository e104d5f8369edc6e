"""Champion/challenger promotion: the gate flows and the operator commands.

Applying a decision tags both versions and moves the ``champion`` alias on a promote
(``adapters.decisions``), emits ``reggaeton.model.promoted`` / ``reggaeton.model.rejected`` and
publishes a markdown artifact. Re-running the gate on the same pair and the same evaluation data
changes nothing.

Under the live policies (``live.policy`` shadow or canary) a challenger the offline gate would promote
is not promoted at once: it goes under live evaluation (``start_live_evaluation``) and the ``live-gate``
deployment (``flows/live_gate.py``) decides it on live traffic. A challenger the offline gate rejects is
rejected as before, and without a champion there is nothing to compare live with: the offline gate decides.

Operator commands (each recorded with who and why, and announced with an event) run from the command
line: ``reggaeton train --gate``, ``reggaeton gate``, ``reggaeton promote``, ``reggaeton rollback``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from adapters import decisions, live_state, prefect_events, registry
from flows import gate, train
from reggaeton import live, names
from reggaeton.promotion import PROMOTED, REJECTED, Decision, decide, markdown_report
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

UNCHANGED: Final = "unchanged"  # outcome of a run that found the decision already made

GATE: Final = "gate"
MANUAL: Final = "manual"
ROLLBACK: Final = "rollback"
LIVE_GATE: Final = "live_gate"
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


def _emit(event: str, model_name: str, version: str, payload: Mapping[str, Any]) -> None:
    prefect_events.emit(event, model_name, version, payload)


def _publish(markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=names.PROMOTION_ARTIFACT_KEY, description=description)


def apply_decision(
    client: MlflowClient, model_name: str, decision: Decision, by: str, action: str = GATE
) -> Outcome:
    """Record a decision on both versions, move the alias on a promote, emit the event, publish the table.

    ``action``: who decided (the offline gate, or the live gate on live evidence).

    Raises:
        PromotionError: the champion moved since the decision was made (the decision is stale).
    """
    current = registry.get_alias(client, model_name, names.CHAMPION)
    current_version = str(current.version) if current is not None else None
    if current_version != decision.champion_version:
        raise PromotionError(
            f"champion is version {current_version}, but the decision was made against "
            f"{decision.champion_version}; re-run the gate"
        )
    stamp = decisions.stamp(by)
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
            names.Tag.DECISION_DETAIL: json.dumps(decision.to_dict(), separators=(",", ":")),
        },
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
    champion = decision.challenger_version if decision.promote else decision.champion_version
    _emit(
        names.Event.PROMOTED if decision.promote else names.Event.REJECTED,
        model_name,
        decision.challenger_version,
        {"action": action, "decided_by": by, **decision.to_dict()},
    )
    _publish(markdown_report(decision), f"{decision.outcome}: version {decision.challenger_version}")
    logger.info("version %s %s: %s", decision.challenger_version, decision.outcome, decision.reason)
    return Outcome(action, decision.outcome, decision.challenger_version, champion, decision.reason, True)


def start_live_evaluation(settings: Settings, client: MlflowClient, decision: Decision, by: str) -> Outcome:
    """Put a challenger the offline gate passed under live evaluation instead of promoting it.

    Its offline evidence is recorded on it (the live gate's final decision records it again, with the
    live evidence); the replicas start shadow-scoring it at their next poll; ``shadow_started`` tells.
    """
    model_name = settings.mlflow.model_name
    version = decision.challenger_version
    reason = (
        f"passed the offline gate ({decision.reason}); under live evaluation (policy "
        f"{settings.live.policy}): the live-gate deployment decides it on live traffic"
    )
    stamp = decisions.stamp(by)
    decisions.tag_decision(
        client,
        model_name,
        version,
        live.SHADOW,
        reason,
        stamp,
        {
            names.Tag.DECISION_AGAINST: decision.champion_version or "none",
            names.Tag.DECISION_DATA: decision.evaluation,
            names.Tag.DECISION_DETAIL: json.dumps(decision.to_dict(), separators=(",", ":")),
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
    """The offline gate's decision now: both versions scored on the same evaluation rows (tasks)."""
    model_name = settings.mlflow.model_name
    frame = load_evaluation(settings, client, challenger, holdout)
    challenger_scores = score(model_name, str(challenger.version), frame)
    champion_scores = score(model_name, str(champion.version), frame) if champion is not None else None
    return decide(champion_scores, challenger_scores, settings.promotion)


@task(cache_policy=NO_CACHE)
def load_evaluation(
    settings: Settings, client: MlflowClient, challenger: ModelVersion, holdout: pd.DataFrame | None
) -> pd.DataFrame:
    """The held-out rows plus labelled traffic the challenger has not seen."""
    return gate.load_evaluation(settings, client, challenger, holdout)


@task(cache_policy=NO_CACHE)
def score(model_name: str, version: str, frame: pd.DataFrame) -> gate.ModelScores:
    """Validity, probabilities and latency of one version on the evaluation data."""
    return gate.score_version(model_name, version, frame)


@task(cache_policy=NO_CACHE)
def record(client: MlflowClient, model_name: str, decision: Decision, by: str) -> Outcome:
    """Apply the decision to the registry and tell Prefect."""
    return apply_decision(client, model_name, decision, by)


@task(cache_policy=NO_CACHE)
def start_live(settings: Settings, client: MlflowClient, decision: Decision, by: str) -> Outcome:
    """Put the challenger under live evaluation (policy shadow or canary) instead of promoting it."""
    return start_live_evaluation(settings, client, decision, by)


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
    client = registry.connect(settings)
    model_name = settings.mlflow.model_name
    challenger = client.get_model_version(model_name, version)
    champion = registry.get_alias(client, model_name, names.CHAMPION)
    current = str(champion.version) if champion is not None else None
    if live_state.read(challenger).under_evaluation:
        why = f"version {version} is under live evaluation: the live gate decides it"
        return Outcome(GATE, UNCHANGED, version, current, why, False)
    frame = load_evaluation(settings, client, challenger, holdout)
    nothing_to_do = decisions.already_decided(challenger, champion, gate.evaluation_hash(frame))
    if nothing_to_do is not None:
        logger.info("nothing to do: %s", nothing_to_do)
        return Outcome(GATE, UNCHANGED, version, current, nothing_to_do, False)
    challenger_scores = score(model_name, version, frame)
    champion_scores = score(model_name, str(champion.version), frame) if champion is not None else None
    decision = decide(champion_scores, challenger_scores, settings.promotion)
    if decision.promote and champion is not None and settings.live.policy != OFFLINE:
        return start_live(settings, client, decision, by)
    return record(client, model_name, decision, by)


@flow(name="promotion-gate")
def promotion_gate(version: str, settings: Settings | None = None) -> dict[str, Any]:
    """Gate a registered version against the champion on its held-out rows plus unseen labelled traffic."""
    settings = settings or Settings()
    return asdict(run_gate(settings, version))


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
    champion itself degraded (``reason="degraded"``, what the retrain trigger passes): that challenger
    is then superseded (rejected) and the new one is evaluated in its place.

    Args:
        data_folder: Folder in the original CSV layout (default: the settings' data source).
        n_trials: Optuna trials (default: from the settings).
        settings: The settings (default: from the environment).
        request_id: The retrain request this run serves. A rerun of a crashed run passes the crashed
            run's request (the rerun automation does), so a version that run registered is gated, not
            trained and registered a second time. Default: this flow run's id, a new request.
        parallel_workers: Tuning runs on the tuning pool (default: ``training.parallel_workers``).
        reason: Why it runs: ``degraded`` (the trigger), else a schedule or a person.
    """
    settings = train.with_overrides(settings or Settings(), data_folder, n_trials, parallel_workers)
    waiting = live_challenger_blocks(settings, reason)
    if waiting is not None:
        return asdict(waiting)
    request = request_id or str(flow_run.id)
    version = train.resume_task(settings, request)
    if version is None:
        version = str(train.train_flow(settings=settings, request_id=request))
    return asdict(run_gate(settings, version))


def live_challenger_blocks(settings: Settings, reason: str | None) -> Outcome | None:
    """Why no retrain starts now (a challenger under live evaluation), or None; supersedes it on degraded."""
    if settings.live.policy == OFFLINE:
        return None
    client = registry.connect(settings)
    model_name = settings.mlflow.model_name
    found = live_state.challenger(client, model_name)
    if found is None or not found[1].under_evaluation:
        return None
    version = found[1].version
    if reason != DEGRADED:
        why = f"version {version} is under live evaluation; a retrain waits for its decision"
        logger.info("no retrain: %s", why)
        champion = registry.get_alias(client, model_name, names.CHAMPION)
        current = str(champion.version) if champion is not None else None
        return Outcome(GATE, UNCHANGED, version, current, why, False)
    why = "superseded: the champion degraded, and a new retrain replaces this challenger"
    decisions.tag_decision(client, model_name, version, REJECTED, why, decisions.stamp(LIVE_GATE))
    live_state.end(client, model_name, version, live.REJECTED)
    logger.info("version %s %s", version, why)
    return None


@flow(name="promote-version")
def promote_version(
    version: str, reason: str, by: str | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Operator command: make a version champion without the statistical gate (it must still be valid).

    Raises:
        PromotionError: the version does not load, predict on the examples or match the signature.
    """
    settings = settings or Settings()
    by = by or decisions.operator_name()
    client = registry.connect(settings)
    model_name = settings.mlflow.model_name
    current = registry.get_alias(client, model_name, names.CHAMPION)
    old = str(current.version) if current is not None else None
    if old == version:
        return asdict(
            Outcome(MANUAL, UNCHANGED, version, old, f"version {version} is already champion", False)
        )
    _, problems = gate.load_checked(model_name, version)
    if problems:
        raise PromotionError(f"refusing to promote version {version}: {'; '.join(problems)}")
    why = f"manual promotion: {reason}"
    stamp = decisions.stamp(by)
    decisions.tag_decision(client, model_name, version, PROMOTED, why, stamp)
    if old is not None:
        decisions.tag_decision(client, model_name, old, decisions.REPLACED, f"version {version} {why}", stamp)
    decisions.move_champion(client, model_name, version, old)
    payload = {"action": MANUAL, "version": version, "previous": old, "reason": reason, "decided_by": by}
    _emit(names.Event.PROMOTED, model_name, version, payload)
    _publish(_operator_report("Manual promotion", payload), f"manual promotion of version {version}")
    return asdict(Outcome(MANUAL, PROMOTED, version, version, why, True))


@flow(name="rollback-champion")
def rollback(reason: str, by: str | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Operator command: make the previous champion champion again.

    Raises:
        PromotionError: there is no champion, or it records no previous champion.
    """
    settings = settings or Settings()
    by = by or decisions.operator_name()
    client = registry.connect(settings)
    model_name = settings.mlflow.model_name
    current = registry.get_alias(client, model_name, names.CHAMPION)
    if current is None:
        raise PromotionError("there is no champion to roll back")
    previous = (current.tags or {}).get(names.Tag.PREVIOUS_CHAMPION)
    if previous is None:
        raise PromotionError(f"champion version {current.version} records no previous champion")
    restored = client.get_model_version(model_name, previous)
    replaced = str(current.version)
    why = f"rollback: {reason}"
    stamp = decisions.stamp(by)
    decisions.tag_decision(client, model_name, replaced, decisions.ROLLED_BACK, why, stamp)
    decisions.tag_decision(client, model_name, previous, decisions.RESTORED, why, stamp)
    client.set_registered_model_alias(model_name, names.CHAMPION, previous)
    # The restored champion's own predecessor becomes the next rollback target.
    older = (restored.tags or {}).get(names.Tag.PREVIOUS_CHAMPION)
    if older is not None:
        client.set_registered_model_alias(model_name, names.PREVIOUS_CHAMPION, older)
    else:
        client.delete_registered_model_alias(model_name, names.PREVIOUS_CHAMPION)
    payload = {
        "action": ROLLBACK,
        "version": previous,
        "previous": replaced,
        "reason": reason,
        "decided_by": by,
    }
    _emit(names.Event.PROMOTED, model_name, previous, payload)
    _publish(_operator_report("Rollback", payload), f"rollback from version {replaced} to {previous}")
    return asdict(Outcome(ROLLBACK, PROMOTED, previous, previous, why, True))


def _operator_report(title: str, payload: Mapping[str, Any]) -> str:
    rows = [f"| {key} | {value} |" for key, value in payload.items()]
    return "\n".join([f"# {title}", "", "| field | value |", "|---|---|", *rows]) + "\n"
