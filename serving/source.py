"""The registry side of hot reload: resolve the champion alias and load a version (blocking calls).

MLflow is imported only here and only when first used, so a server starting from its local cache
does not pay for importing it on the way to its first prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reggaeton import names
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

            self._client = registry.connect(self._settings)
        return self._client

    def champion(self) -> Any:
        """The ModelVersion the champion alias points to, or None when there is none."""
        from adapters import registry

        return registry.get_alias(self._connected(), self.model_name, names.CHAMPION)

    def live_role(self) -> LiveRole | None:
        """The version behind the challenger alias when it is under live evaluation, else None.

        A challenger is under live evaluation while its live state (``names.Tag.LIVE_STATE``) is shadow
        or canary; during a canary its share is ``names.Tag.CANARY_SHARE``. The champion itself, or a
        version the offline policy registered (state absent), is never shadowed.
        """
        from adapters import registry

        found = registry.get_alias(self._connected(), self.model_name, names.CHALLENGER)
        if found is None:
            return None
        tags = found.tags or {}
        state = tags.get(names.Tag.LIVE_STATE)
        if state not in ("shadow", "canary"):
            return None
        try:
            share = float(tags.get(names.Tag.CANARY_SHARE, "0")) if state == "canary" else 0.0
        except ValueError:
            share = 0.0
        return LiveRole(found, min(max(share, 0.0), 1.0))

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
