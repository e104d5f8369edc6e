"""Hot reload: follow the champion alias, authorize it, load new versions off the event loop, check, swap.

A champion whose signed decision record does not authorize it (an alias moved by hand, a record copied
from another version or older than the served one) is not loaded: the current model keeps serving, the
refusal is counted on /metrics and announced once with ``reggaeton.model.unauthorized_champion``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal

from serving.cache import ModelCache
from serving.events import emit_reload_failed, emit_unauthorized_champion
from serving.holder import ModelHolder, ServedModel, prepared
from serving.metrics import ServingMetrics
from serving.source import RegistrySource, UnauthorizedChampionError
from serving.threads import fire_and_forget, in_daemon_thread

logger = logging.getLogger(__name__)

Outcome = Literal["swapped", "unchanged", "refused", "unauthorized", "unavailable", "no_champion"]


@dataclass(frozen=True)
class ReloadResult:
    """What one registry check did."""

    outcome: Outcome
    version: str | None
    detail: str | None = None


class Refresher:
    """Polls the registry and swaps the served model; a version that fails to load or check is refused."""

    def __init__(
        self,
        holder: ModelHolder,
        source: RegistrySource,
        cache: ModelCache,
        metrics: ServingMetrics,
        poll_interval_s: float,
    ) -> None:
        self._holder = holder
        self._source = source
        self._cache = cache
        self._metrics = metrics
        self._poll_interval_s = poll_interval_s
        self._lock = asyncio.Lock()
        self._refused: dict[str, str] = {}
        self._announced: set[str] = set()  # unauthorized versions already announced (one event each)
        self._cache_lock = threading.Lock()

    def install(self, served: ServedModel) -> None:
        """Serve a model (already checked) and publish it in the metrics."""
        self._holder.swap(served)
        # Move the long-lived objects (libraries, the model) out of the collector's reach: a full
        # collection over them would stall every request. (The replaced model is freed by refcount.)
        gc.freeze()
        sequence = served.decision.sequence if served.decision is not None else None
        self._metrics.set_served(served.version, served.source, served.loaded_at.timestamp(), sequence)
        logger.info(
            "serving %s version %s (from %s, scorer %s)",
            served.name,
            served.version,
            served.source,
            served.scorer_kind,
        )

    async def check(self, *, force: bool = False) -> ReloadResult:
        """Resolve the champion once and swap to it if it is new and good.

        Args:
            force: Retry a version refused earlier (e.g. after its artifact was fixed).
        """
        async with self._lock:
            result = await self._check(force=force)
        self._metrics.reloads.labels(outcome=result.outcome).inc()
        return result

    async def _check(self, *, force: bool) -> ReloadResult:
        started = time.perf_counter()
        try:
            champion = await in_daemon_thread(self._source.champion, name="registry-lookup")
        except Exception as exc:
            logger.warning("registry unavailable: %r", exc)
            return ReloadResult("unavailable", None, repr(exc)[:500])
        if champion is None:
            return ReloadResult("no_champion", None)
        version = str(champion.version)
        self._metrics.set_monitoring(version, getattr(champion, "tags", None) or {})
        current = self._holder.current
        if current is not None and current.version == version:
            self._alias_authorized()
            return ReloadResult("unchanged", version)
        served_sequence = current.decision.sequence if current is not None and current.decision else None
        try:
            record, signature = self._source.authorize(champion, served_sequence)
        except UnauthorizedChampionError as exc:
            return self._unauthorized(version, str(exc), current)
        self._alias_authorized()
        if version in self._refused and not force:
            return ReloadResult("refused", version, self._refused[version])
        try:
            served = await in_daemon_thread(self._load_checked, champion, name="model-load")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self._refused[version] = reason
            logger.error("refused version %s: %s", version, reason)
            fire_and_forget(
                emit_reload_failed,
                self._source.model_name,
                version,
                reason,
                current.version if current else None,
                name="reload-failed-event",
            )
            return ReloadResult("refused", version, reason)
        self._refused.pop(version, None)
        served = dataclasses.replace(
            served, load_seconds=time.perf_counter() - started, decision=record, signature=signature
        )
        self.install(served)
        fire_and_forget(self._save_cache, served, name="model-cache")
        return ReloadResult("swapped", version)

    def _unauthorized(self, version: str, reason: str, current: ServedModel | None) -> ReloadResult:
        """Keep serving; count the refusal; announce it once per alias move."""
        self._metrics.set_unauthorized(version)
        if version not in self._announced:
            self._announced.add(version)
            self._metrics.unauthorized.inc()
            serving = current.version if current is not None else None
            logger.error(
                "champion alias points at version %s; not serving it (serving %s): %s",
                version,
                serving,
                reason,
            )
            fire_and_forget(
                emit_unauthorized_champion,
                self._source.model_name,
                version,
                reason,
                serving,
                name="unauthorized-champion-event",
            )
        return ReloadResult("unauthorized", version, reason)

    def _alias_authorized(self) -> None:
        """The alias points at an authorized version again: a later move by hand is announced anew."""
        self._announced.clear()
        self._metrics.set_unauthorized(None)

    def _load_checked(self, champion: object) -> ServedModel:
        return prepared(self._source.load(champion))

    def _save_cache(self, served: ServedModel) -> None:
        try:
            with self._cache_lock:  # a later swap must never be overwritten by an earlier one
                if self._holder.current is served:
                    self._cache.save(served)
        except Exception:
            logger.exception("could not cache version %s", served.version)

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            try:
                await self.check()
            except Exception:  # never let the poller die; the next round tries again
                logger.exception("registry check failed")
            await asyncio.sleep(self._poll_interval_s)
