"""Local disk cache of the last good model, so the server starts and serves while MLflow is down.

The cache is written by this server from a model it loaded from the registry and checked; it is a
joblib (pickle) file, so the cache folder must be as trusted as the server's own code.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import joblib

from serving.holder import ServedModel

logger = logging.getLogger(__name__)

CACHE_FILE: Final = "champion.joblib"
_FORMAT: Final = 1


class ModelCache:
    """One file holding the last good model and its metadata, replaced atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / CACHE_FILE

    def save(self, served: ServedModel) -> None:
        """Write the model and its metadata (atomic rename, so a crash never leaves half a file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "format": _FORMAT,
            "name": served.name,
            "version": served.version,
            "run_id": served.run_id,
            "threshold": served.threshold,
            "metrics": dict(served.metrics),
            "model": served.model,
        }
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".champion-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                joblib.dump(payload, handle)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, model_name: str) -> ServedModel | None:
        """The cached model of ``model_name``, or None when there is no usable cache."""
        if not self.path.is_file():
            return None
        try:
            payload = joblib.load(self.path)
        except Exception:
            logger.exception("model cache %s is unreadable; ignoring it", self.path)
            return None
        if (
            not isinstance(payload, dict)
            or payload.get("format") != _FORMAT
            or payload.get("name") != model_name
        ):
            logger.warning("model cache %s is for another model or format; ignoring it", self.path)
            return None
        return ServedModel(
            name=payload["name"],
            version=str(payload["version"]),
            run_id=payload["run_id"],
            model=payload["model"],
            threshold=float(payload["threshold"]),
            loaded_at=datetime.now().astimezone(),
            source="cache",
            metrics=payload["metrics"],
        )
