"""Registry writes of a promotion decision: tags on the versions it touches, then the alias moves.

The ``champion`` alias moves last, so whoever sees the new champion sees its tags and its signed
decision record; the previous champion stays findable (a tag on the new champion and the
``previous-champion`` alias).

The decision record (``reggaeton.decision_record``) lives on the version it decides about: its canonical
JSON in the ``reggaeton.decision_record`` tag, its signature in ``reggaeton.decision_signature``. Its
sequence is one more than the highest the model has seen (the ``reggaeton.decision_sequence`` tag of the
registered model, and every version's record): the caller holds the decision lock
(``adapters.prefect_api.decision_lock``) from numbering to the alias move, so two deciders never take
the same number, and the alias never moves back to an older decision.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from adapters import registry
from reggaeton import decision_record, names
from reggaeton.decision_record import DecisionRecord, RecordError, SigningKey, VerifyKeys
from reggaeton.promotion import PROMOTED, REJECTED

# Decision tag values besides the gate's own "promoted" / "rejected".
RETAINED: Final = "retained"  # champion that kept its place against a challenger


REPLACED: Final = "replaced"  # champion that a promotion replaced


ROLLED_BACK: Final = "rolled_back"  # champion an operator rolled back (the gate never re-promotes it)


RESTORED: Final = "restored"  # previous champion brought back by a rollback

# MLflow's SQL registries hold a version's description in a VARCHAR(5000) (Postgres enforces it).
DESCRIPTION_LIMIT: Final = 5000


def operator_name() -> str:
    """Who runs a command: the login name, else $USER, else "unknown"."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stamp(by: str) -> dict[str, str]:
    """Who decided and when, the same on every version one decision touches."""
    return {names.Tag.DECIDED_BY: by, names.Tag.DECIDED_AT: now()}


def tag_decision(
    client: MlflowClient,
    model_name: str,
    version: str,
    decision: str,
    reason: str,
    stamp: Mapping[str, str],
    details: Mapping[str, str] | None = None,
    notes: str | None = None,
) -> None:
    """Record a decision on a version: what, why, its details, then who and when.

    ``notes`` (markdown, e.g. the slice table) follow the reason in the version's description.
    """
    tags = {names.Tag.DECISION: decision, names.Tag.DECISION_REASON: reason, **(details or {}), **stamp}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    # The same in words where the MLflow UI shows it (the tags stay: the gate and rollback read them).
    who = ", ".join(
        stamp.get(key, "") for key in (names.Tag.DECIDED_AT, names.Tag.DECIDED_BY) if key in stamp
    )
    description = f"{decision} ({who}): {reason}" + (f"\n\n{notes}" if notes else "")
    if len(description) > DESCRIPTION_LIMIT:  # the full record is in the tags and the run's gate/ files
        description = description[: DESCRIPTION_LIMIT - 40] + "\n\n(cut: see the run's gate/ files)"
    client.update_model_version(model_name, version, description=description)


def move_champion(client: MlflowClient, model_name: str, new: str, old: str | None) -> None:
    """Point ``champion`` at ``new`` last, after the previous champion is recorded on it."""
    if old is not None and old != new:
        client.set_model_version_tag(model_name, new, names.Tag.PREVIOUS_CHAMPION, old)
        client.set_registered_model_alias(model_name, names.PREVIOUS_CHAMPION, old)
    client.set_registered_model_alias(model_name, names.CHAMPION, new)


def already_decided(challenger: ModelVersion, champion: ModelVersion | None, evaluation: str) -> str | None:
    """Why there is nothing to do for this pair and evaluation data (None: the gate must decide)."""
    if champion is not None and str(champion.version) == str(challenger.version):
        return f"version {challenger.version} is already the champion"
    tags = challenger.tags or {}
    decision = tags.get(names.Tag.DECISION)
    if decision == ROLLED_BACK:
        return f"version {challenger.version} was rolled back; promote it by hand if it should return"
    against = str(champion.version) if champion is not None else "none"
    # Only a rejection is settled by its tags: a version tagged promoted against the current champion
    # yet not champion was stopped between the tags and the alias move (apply_decision moves it
    # last), so the gate decides it again and finishes the promotion.
    if (
        decision == REJECTED
        and tags.get(names.Tag.DECISION_AGAINST) == against
        and tags.get(names.Tag.DECISION_DATA) == evaluation
    ):
        reason = tags.get(names.Tag.DECISION_REASON)
        return f"already {decision} against champion {against} on the same data: {reason}"
    return None


# --- the signed decision record ------------------------------------------------------------------------
def record_tags(version: ModelVersion) -> tuple[str | None, str | None]:
    """A version's decision record text and signature (None where a tag is missing)."""
    tags = version.tags or {}
    return tags.get(names.Tag.DECISION_RECORD), tags.get(names.Tag.DECISION_SIGNATURE)


def authorizing_record(version: ModelVersion, keys: VerifyKeys, model_name: str) -> DecisionRecord:
    """The record that makes this version champion (the sequence is not compared here).

    Raises:
        RecordError: why it does not (none, unsigned, a bad signature, another version's, not a promotion).
    """
    text, signature = record_tags(version)
    return decision_record.authorize_champion(
        text, signature, keys, model=model_name, version=str(version.version)
    )


def _versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name='{model_name}'"))


def next_sequence(client: MlflowClient, model_name: str) -> int:
    """One more than the highest decision sequence this model has seen (call under the decision lock)."""
    counter = (client.get_registered_model(model_name).tags or {}).get(names.Tag.DECISION_SEQUENCE)
    seen = [int(counter)] if counter and counter.isdigit() else []
    for version in _versions(client, model_name):
        text, _ = record_tags(version)
        if text:
            try:
                seen.append(decision_record.parse(text).sequence)
            except RecordError:
                continue  # a damaged record numbers nothing
    return max(seen, default=0) + 1


def sign_decision(client: MlflowClient, key: SigningKey, **fields: Any) -> DecisionRecord:
    """Number, sign and store a decision record on the version it decides about.

    Call under the decision lock, before moving any alias. ``fields`` are those of
    :func:`reggaeton.decision_record.new_record` but ``sequence``.
    """
    model_name = str(fields["model"])
    record = decision_record.new_record(sequence=next_sequence(client, model_name), **fields)
    signature = key.sign(record)
    client.set_registered_model_tag(model_name, names.Tag.DECISION_SEQUENCE, str(record.sequence))
    client.set_model_version_tag(model_name, record.version, names.Tag.DECISION_RECORD, record.text())
    client.set_model_version_tag(model_name, record.version, names.Tag.DECISION_SIGNATURE, signature)
    return record


def latest_authorized(
    client: MlflowClient, model_name: str, keys: VerifyKeys
) -> tuple[ModelVersion, DecisionRecord] | None:
    """The version the newest valid promoting record names: the last champion a decision made."""
    best: tuple[ModelVersion, DecisionRecord] | None = None
    for version in _versions(client, model_name):
        try:
            record = authorizing_record(version, keys, model_name)
        except RecordError:
            continue
        if best is None or record.sequence > best[1].sequence:
            best = (version, record)
    return best


ADOPTED_SUMMARY: Final = "adopted: the champion from before signed decisions, signed once on upgrade"


def adopt_unsigned_champion(
    client: MlflowClient, key: SigningKey, model_name: str, by: str
) -> DecisionRecord | None:
    """Sign the current champion once when the registry predates signed decisions.

    Only while no version of the model carries a decision record (the first start of a stack with
    signatures over an older registry): afterwards a champion without a valid record is one moved by
    hand, and only an operator's ``reggaeton promote`` may accept it. Call under the decision lock.

    Returns:
        The record written, or None (no champion, or the registry already has records).
    """
    champion = registry.get_alias(client, model_name, names.CHAMPION)
    if champion is None or any(record_tags(v)[0] for v in _versions(client, model_name)):
        return None
    return sign_decision(
        client,
        key,
        model=model_name,
        version=str(champion.version),
        action=decision_record.MANUAL,
        outcome=PROMOTED,
        previous_champion=None,
        evaluation=None,
        evidence=decision_record.evidence_of({"adopted": str(champion.version)}, ADOPTED_SUMMARY),
        policy={},
        decided_by=by,
        decided_at=now(),
    )
