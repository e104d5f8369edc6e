"""The registry side of hot reload: resolve the champion alias, authorize it, load it (blocking calls).

A version is served only when its signed decision record makes it champion (``decision_record
.authorize_champion``, with the public keys of ``adapters.keys``); an alias moved any other way is
refused here, before anything is loaded. MLflow is imported only here and only when first used, so a
server starting from its local cache does not pay for importing it on the way to its first prediction.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from adapters import keys
from reggaeton import decision_record, names
from reggaeton.decision_record import DecisionRecord, RecordError, VerifyKeys
from reggaeton.servable import NotServableError, threshold_from_tags
from reggaeton.settings import Settings
from serving.holder import ModelCheckError, ServedModel

logger = logging.getLogger(__name__)


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
