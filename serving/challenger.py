"""Follow the challenger under live evaluation: poll its alias, load it off the event loop, swap it in.

Every replica polls the ``challenger`` alias on the champion's interval and reads the signed decision
record on that version (``RegistrySource.live_role``): whether the deciding side put it under live
evaluation (shadow or canary) and, during a canary, which share of the requests it answers. So every
replica shadows the same version and holds the same canary share, whichever replica a request reaches.
A version that fails to load or to pass the servability check is not shadowed (counted as a failing
episode); the share of a version already loaded changes without reloading it.
"""

from __future__ import annotations

import asyncio
import logging

from serving.holder import ModelHolder, ServedModel, prepared
from serving.live import LiveAssignment, LiveHolder
from serving.metrics import ServingMetrics
from serving.shadow import Episodes
from serving.source import LiveRole, RegistrySource
from serving.threads import in_daemon_thread

logger = logging.getLogger(__name__)

LOAD: str = "load"  # the failing kind of a challenger that cannot be loaded or checked


class ChallengerRefresher:
    """Keeps the :class:`LiveHolder` on the challenger the registry says is under live evaluation."""

    def __init__(
        self,
        holder: LiveHolder,
        champion: ModelHolder,
        source: RegistrySource,
        metrics: ServingMetrics,
        episodes: Episodes,
        poll_interval_s: float,
    ) -> None:
        self._holder = holder
        self._champion = champion
        self._source = source
        self._metrics = metrics
        self._episodes = episodes
        self._poll_interval_s = poll_interval_s
        self._refused: set[str] = set()
        self._lock = asyncio.Lock()

    async def check(self) -> LiveAssignment | None:
        """Look at the challenger alias once and follow it."""
        async with self._lock:
            return await self._check()

    async def _check(self) -> LiveAssignment | None:
        served = self._champion.current
        sequence = served.decision.sequence if served is not None and served.decision is not None else None
        try:
            role = await in_daemon_thread(self._source.live_role, sequence, name="challenger-lookup")
        except Exception as exc:
            logger.warning("registry unavailable for the challenger: %r", exc)
            return self._holder.current  # keep what we have until the registry answers again
        current = self._holder.current
        if role is None:
            if current is not None:
                logger.info("no challenger under live evaluation any more (was version %s)", current.version)
            return self._set(None)
        if current is not None and current.version == role.version:
            if current.share == role.share and current.sequence == role.sequence:
                return current
            if (
                role.sequence is not None
                and current.sequence is not None
                and role.sequence < current.sequence
            ):
                return current  # an older decision replayed: the newer one stands
            return self._set(LiveAssignment(current.served, role.share, role.sequence))
        if role.version in self._refused:
            return self._set(None)
        try:
            served = await in_daemon_thread(self._load, role, name="challenger-load")
        except Exception as exc:
            self._refused.add(role.version)
            self._episodes.failed("shadow", role.version, LOAD, f"{type(exc).__name__}: {exc}")
            return self._set(None)
        return self._set(LiveAssignment(served, role.share, role.sequence))

    def _load(self, role: LiveRole) -> ServedModel:
        return prepared(self._source.load(role.model_version))

    def _set(self, assignment: LiveAssignment | None) -> LiveAssignment | None:
        previous = self._holder.swap(assignment)
        if assignment is not previous:
            self._metrics.set_challenger(
                assignment.version if assignment else None, assignment.share if assignment else 0.0
            )
            if assignment is not None and (previous is None or previous.share != assignment.share):
                logger.info(
                    "challenger version %s: shadow on, canary share %.0f%%",
                    assignment.version,
                    assignment.share * 100,
                )
        return assignment

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            try:
                await self.check()
            except Exception:  # never let the poller die
                logger.exception("challenger check failed")
            await asyncio.sleep(self._poll_interval_s)
