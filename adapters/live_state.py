"""A version's place in the live evaluation, kept as registry tags by the deciding side.

``registered -> shadow -> canary -> champion``, or ``rejected`` (``reggaeton.live``): the state, when the
live evaluation began (its evidence counts from then), and during a canary its step, share and when the
step began. The API replicas follow the challenger alias and these tags: a version in ``shadow`` or
``canary`` is shadow-scored, and during a canary answers its share of the requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from adapters import registry
from reggaeton import live, names


def now() -> datetime:
    """The current time, UTC, to the microsecond (what the tags hold, in ISO 8601)."""
    return datetime.now(UTC)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LiveState:
    """What the tags of one version say about its live evaluation."""

    version: str
    state: str  # reggaeton.live: registered, shadow, canary, champion, rejected
    since: datetime | None  # when its live evaluation began
    canary_step: int | None = None  # index into LiveSettings.canary_steps, during a canary
    canary_share: float = 0.0
    canary_since: datetime | None = None  # when the current canary step began
    canary_held: bool = False  # an operator aborted its canary: no automatic canary again

    @property
    def under_evaluation(self) -> bool:
        """Shadowed (and maybe a canary) now."""
        return self.state in live.UNDER_EVALUATION


def read(version: ModelVersion) -> LiveState:
    """The live state recorded on a version (``registered`` when it has none)."""
    tags = version.tags or {}
    step = tags.get(names.Tag.CANARY_STEP)
    share = tags.get(names.Tag.CANARY_SHARE)
    return LiveState(
        version=str(version.version),
        state=tags.get(names.Tag.LIVE_STATE, live.REGISTERED),
        since=_time(tags.get(names.Tag.LIVE_SINCE)),
        canary_step=int(step) if step and step.isdigit() else None,
        canary_share=float(share) if share else 0.0,
        canary_since=_time(tags.get(names.Tag.CANARY_SINCE)),
        canary_held=tags.get(names.Tag.CANARY_HELD) == "true",
    )


def challenger(client: MlflowClient, model_name: str) -> tuple[ModelVersion, LiveState] | None:
    """The version behind the challenger alias and its live state, or None when there is no alias."""
    found = registry.get_alias(client, model_name, names.CHALLENGER)
    return None if found is None else (found, read(found))


def set_tags(client: MlflowClient, model_name: str, version: str, tags: dict[str, Any]) -> None:
    """Write live-state tags on a version (the state last: readers see it after what it needs); a None
    value clears the tag to an empty value, which :func:`read` takes as absent.

    Cleared, not deleted: deleting a version's tag needs MLflow's MANAGE permission on the model, and the
    promotion account of the container stacks has EDIT only (infra/accounts.py), enough to set tags.
    """
    present = client.get_model_version(model_name, version).tags or {}
    for key, value in sorted(tags.items(), key=lambda item: item[0] == names.Tag.LIVE_STATE):
        if value is None:
            if present.get(key):
                client.set_model_version_tag(model_name, version, key, "")
        else:
            client.set_model_version_tag(model_name, version, key, str(value))


def begin(client: MlflowClient, model_name: str, version: str, at: datetime) -> None:
    """Put a version under shadow evaluation (the replicas start scoring it at their next poll)."""
    client.set_registered_model_alias(model_name, names.CHALLENGER, version)
    set_tags(
        client,
        model_name,
        version,
        {names.Tag.LIVE_SINCE: at.isoformat(), names.Tag.LIVE_STATE: live.SHADOW},
    )


def canary(client: MlflowClient, model_name: str, version: str, step: int | None, share: float) -> None:
    """Move a version's canary to a step (None: back to shadow only, share 0)."""
    if step is None:
        tags: dict[str, Any] = {
            names.Tag.CANARY_SHARE: None,
            names.Tag.CANARY_STEP: None,
            names.Tag.CANARY_SINCE: None,
            names.Tag.LIVE_STATE: live.SHADOW,
        }
    else:
        tags = {
            names.Tag.CANARY_SINCE: now().isoformat(),
            names.Tag.CANARY_STEP: step,
            names.Tag.CANARY_SHARE: f"{share:g}",
            names.Tag.LIVE_STATE: live.CANARY,
        }
    set_tags(client, model_name, version, tags)


def end(client: MlflowClient, model_name: str, version: str, state: str) -> None:
    """End a version's live evaluation: champion or rejected (the replicas stop scoring it)."""
    set_tags(client, model_name, version, {names.Tag.CANARY_SHARE: None, names.Tag.LIVE_STATE: state})
