"""Local disk cache of the last good model, so the server starts and serves while MLflow is down.

Two files, each replaced atomically. ``champion.joblib`` holds the version's metadata and its chosen
scorer: for a rebuilt scorer (``reggaeton/scorer.py``) that is numpy arrays only, so a server starts
from it without importing scikit-learn (an API replica is ready ~1.5 s sooner). ``champion-model.joblib``
holds the pipeline, read only when the scorer cannot be used: written by another version of
``reggaeton/scorer.py`` (its code hash differs), or it cannot be unpickled (it is pickled on its own, so
the metadata stays readable). Either way the example songs are scored again before anything is served.

The cache is written by this server from a model it loaded from the registry and checked; it is a
joblib (pickle) file, so the cache folder must be as trusted as the server's own code. It keeps the
version's signed decision record too, verified again with the current public keys before the cached
version serves (a cache written before signed decisions, or under a key no longer trusted, is ignored).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import joblib

from reggaeton import decision_record
from reggaeton import scorer as scorer_module
from reggaeton.decision_record import RecordError, VerifyKeys
from serving.holder import ServedModel, checked, prepared

logger = logging.getLogger(__name__)

CACHE_FILE: Final = "champion.joblib"
MODEL_FILE: Final = "champion-model.joblib"
_FORMAT: Final = 3  # 3: with the decision record


@functools.cache
def scorer_code() -> str:
    """A hash of the code that rebuilt scorers are made of: a cached one is used only by the same code."""
    return hashlib.sha256(Path(scorer_module.__file__).read_bytes()).hexdigest()[:16]


class ModelCache:
    """The last good model's scorer and metadata in one file, its pipeline in another."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / CACHE_FILE
        self.model_path = folder / MODEL_FILE

    def save(self, served: ServedModel) -> None:
        """Write the pipeline, then the scorer and metadata (each an atomic rename).

        A crash between the two leaves the earlier version's scorer and metadata, which still serve on
        their own; the pipeline file names its version, so it is never taken for another one's.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if served.model is not None:
            self._write(
                self.model_path, {"format": _FORMAT, "version": served.version, "model": served.model}
            )
        self._write(
            self.path,
            {
                "format": _FORMAT,
                "name": served.name,
                "version": served.version,
                "run_id": served.run_id,
                "threshold": served.threshold,
                "metrics": dict(served.metrics),
                "scorer": pickle.dumps(served.scorer, protocol=pickle.HIGHEST_PROTOCOL),
                "scorer_code": scorer_code(),
                "decision": served.decision.text() if served.decision is not None else None,
                "signature": served.signature,
            },
        )

    def load(self, model_name: str, trusted: VerifyKeys) -> ServedModel | None:
        """The cached model of ``model_name``, authorized, checked and ready to serve, or None.

        Blocking (reads files, scores the example songs): call it off the event loop.

        Raises:
            ModelCheckError: the cached model must not be served.
        """
        payload = self._read(self.path)
        if payload is None:
            return None
        if payload.get("format") != _FORMAT or payload.get("name") != model_name:
            logger.warning("model cache %s is for another model or format; ignoring it", self.path)
            return None
        version = str(payload["version"])
        try:
            decision = decision_record.authorize_champion(
                payload.get("decision"), payload.get("signature"), trusted, model=model_name, version=version
            )
        except RecordError as exc:
            logger.warning("cached version %s is not authorized now (%s); ignoring the cache", version, exc)
            return None
        scorer = None
        if payload.get("scorer_code") == scorer_code():
            try:
                scorer = pickle.loads(payload["scorer"])
            except Exception:
                logger.exception("cached scorer of version %s cannot be read", version)
        else:
            logger.info("cached scorer was made by other code; rebuilding it from the cached pipeline")
        model = None
        if scorer is None:
            stored = self._read(self.model_path)
            if stored is None or stored.get("format") != _FORMAT or str(stored.get("version")) != version:
                logger.warning("no cached pipeline of version %s; ignoring the cache", version)
                return None
            model = stored["model"]
        served = ServedModel(
            name=payload["name"],
            version=version,
            run_id=payload["run_id"],
            model=model,
            threshold=float(payload["threshold"]),
            loaded_at=datetime.now().astimezone(),
            source="cache",
            metrics=payload["metrics"],
            scorer=scorer,
            decision=decision,
            signature=payload["signature"],
        )
        return checked(served) if scorer is not None else prepared(served)

    @staticmethod
    def _write(path: Path, payload: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                joblib.dump(payload, handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            payload = joblib.load(path)
        except Exception:
            logger.exception("model cache %s is unreadable; ignoring it", path)
            return None
        return payload if isinstance(payload, dict) else None
