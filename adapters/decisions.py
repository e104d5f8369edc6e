"""Registry writes of a promotion decision: tags on the versions it touches, then the alias moves.

The ``champion`` alias moves last, so whoever sees the new champion sees its tags; the previous
champion stays findable (a tag on the new champion and the ``previous-champion`` alias).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from reggaeton import names
from reggaeton.promotion import REJECTED

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
