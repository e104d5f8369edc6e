"""The registry side of hot reload: resolve the champion alias, authorize it, load it (blocking calls).

A version is served only when its signed decision record makes it champion (``decision_record
.authorize_champion``, with the public keys of ``adapters.keys``); an alias moved any other way is
refused here, before anything is loaded. MLflow is imported only here and only when first used, so a
server starting from its local cache does not pay for importing it on the way to its first prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapters import keys
from reggaeton import decision_record, live_states, names
from reggaeton.decision_record import DecisionRecord, RecordError, VerifyKeys
from reggaeton.servable import NotServableError, threshold_from_tags
from reggaeton.settings import Settings
from serving.holder import ModelCheckError, ServedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveRole:
    """The challenger under live evaluation, as the deciding side recorded it."""

    model_version: Any  # the registry's ModelVersion (to load it)
    share: float  # of the requests it answers as a canary (0: shadow only)
    sequence: int | None = None  # of the decision that set it

    @property
    def version(self) -> str:
        """Its version number."""
        return str(self.model_version.version)


class UnauthorizedChampionError(RuntimeError):
    """The champion alias points at a version no signed decision made champion; the message says why."""


class RegistrySource:
    """Reads ``models:/<name>@champion`` via ``adapters.registry``; every method blocks (use a thread)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None

    @property
    def model_name(self) -> str:
        """The registered model followed."""
        return self._settings.mlflow.model_name

    def _connected(self) -> Any:
        if self._client is None:
            from adapters import registry

            self._client = registry.connect(self._settings, names.SERVING_ACCOUNT)
        return self._client

    def champion(self) -> Any:
        """The ModelVersion the champion alias points to, or None when there is none."""
        from adapters import registry

        return registry.get_alias(self._connected(), self.model_name, names.CHAMPION)

    def live_role(self, served_sequence: int | None) -> LiveRole | None:
        """The version behind the challenger alias when a signed decision put it under live evaluation.

        Its decision record (``reggaeton.decision_record``) must verify with the trusted public keys,
        decide about that very version, say ``shadow`` or ``canary`` (``live_states.assigned_share``:
        the canary's share is in the signed record) and be newer than the served champion's decision
        (``served_sequence``): a record replayed, copied from another version, or older than the
        champion is not followed, so nobody but the deciding side can make a replica shadow a version,
        let alone hand it a share of the requests.
        """
        from adapters import registry

        found = registry.get_alias(self._connected(), self.model_name, names.CHALLENGER)
        if found is None:
            return None
        tags = found.tags or {}
        text, signature = tags.get(names.Tag.DECISION_RECORD), tags.get(names.Tag.DECISION_SIGNATURE)
        if not text or not signature:
            return None
        try:
            record = self.verify_keys().verify(text, signature)
        except (RecordError, keys.KeyUnavailable) as exc:
            logger.debug("challenger version %s not followed: %s", found.version, exc)
            return None
        if record.model != self.model_name or record.version != str(found.version):
            return None
        if served_sequence is not None and record.sequence <= served_sequence:
            return None
        share = live_states.assigned_share(record)
        return None if share is None else LiveRole(found, share, record.sequence)

    def verify_keys(self) -> VerifyKeys:
        """The public keys trusted now (read again each time: a key file may appear or rotate)."""
        return keys.verify_keys(self._settings)

    def authorize(self, version: Any, served_sequence: int | None) -> tuple[DecisionRecord, str]:
        """The verified decision record of the champion version, and its signature.

        Args:
            version: The ModelVersion the alias points at (with its tags).
            served_sequence: The sequence of the served version's record (None: nothing served).

        Raises:
            UnauthorizedChampionError: no record, a bad signature, another version's record, not a
                promotion, or a decision older than the served one.
        """
        tags = version.tags or {}
        text, signature = tags.get(names.Tag.DECISION_RECORD), tags.get(names.Tag.DECISION_SIGNATURE)
        try:
            trusted = self.verify_keys()
            record = decision_record.authorize_champion(
                text,
                signature,
                trusted,
                model=self.model_name,
                version=str(version.version),
                served_sequence=served_sequence,
            )
        except (RecordError, keys.KeyUnavailable) as exc:
            raise UnauthorizedChampionError(str(exc)) from None
        assert signature is not None  # authorize_champion refuses an unsigned record
        return record, signature

    def load(self, version: Any) -> ServedModel:
        """Load a registered version into a :class:`ServedModel` (not yet smoke-checked).

        Raises:
            ModelCheckError: when the version carries no usable threshold tag.
        """
        from adapters import registry

        client = self._connected()
        try:
            threshold = threshold_from_tags(version.tags, str(version.version))
        except NotServableError as exc:
            raise ModelCheckError(str(exc)) from exc
        # Read once per version loaded (off the request path): GET /model serves them from memory.
        try:
            metrics = registry.version_metrics(client, version)
        except Exception as exc:  # figures to show, not a reason to refuse a servable version
            logger.warning("version %s: its logged model's metrics are unreadable: %r", version.version, exc)
            metrics = registry.legacy_tag_metrics(version)
        model = registry.load_pipeline(self.model_name, str(version.version))
        return ServedModel(
            name=self.model_name,
            version=str(version.version),
            run_id=version.run_id,
            model=model,
            threshold=threshold,
            loaded_at=datetime.now().astimezone(),
            source="registry",
            metrics=metrics,
        )
