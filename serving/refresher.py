"""Hot reload: follow the champion alias, load new versions off the event loop, check, then swap."""

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
from serving.events import emit_reload_failed
from serving.holder import ModelHolder, ServedModel, prepared
from serving.metrics import ServingMetrics
from serving.source import RegistrySource
from serving.threads import fire_and_forget, in_daemon_thread

logger = logging.getLogger(__name__)

Outcome = Literal["swapped", "unchanged", "refused", "unavailable", "no_champion"]


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
        self._cache_lock = threading.Lock()

    def install(self, served: ServedModel) -> None:
        """Serve a model (already checked) and publish it in the metrics."""
        self._holder.swap(served)
        # Move the long-lived objects (libraries, the model) out of the collector's reach: a full
        # collection over them would stall every request. (The replaced model is freed by refcount.)
        gc.freeze()
        self._metrics.set_served(served.version, served.source, served.loaded_at.timestamp())
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
            return ReloadResult("unchanged", version)
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
        served = dataclasses.replace(served, load_seconds=time.perf_counter() - started)
        self.install(served)
        fire_and_forget(self._save_cache, served, name="model-cache")
        return ReloadResult("swapped", version)

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
