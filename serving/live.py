"""What a replica knows of the challenger under live evaluation: the model, its role and canary share.

The challenger refresher (``serving.challenger``) swaps one immutable :class:`LiveAssignment` into the
:class:`LiveHolder`; requests read it once. The canary route is chosen per client key when the request
names one (``names.CLIENT_HEADER``: sticky, so a client is answered by one model during a step) and per
request otherwise. :class:`LiveStats` counts what each role did per stats interval, for ``live_stats``.
"""

from __future__ import annotations

import random
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from adapters.prediction_log import STATS_CANARY, STATS_CHAMPION, STATS_SHADOW
from reggaeton.names import CLIENT_HEADER
from serving.holder import ServedModel

ROLES: Final = (STATS_SHADOW, STATS_CANARY, STATS_CHAMPION)
_CLIENT: Final = CLIENT_HEADER.encode()
_SCALE: Final = float(2**32)


@dataclass(frozen=True, eq=False)
class LiveAssignment:
    """The challenger a replica shadows and, during a canary, lets answer ``share`` of the requests."""

    served: ServedModel
    share: float = 0.0  # 0: shadow only
    sequence: int | None = None  # of the signed decision that set it (a replayed older one is refused)
    salt: bytes = field(default=b"", repr=False)  # per version, so each canary draws its clients anew

    def __post_init__(self) -> None:
        if not self.salt:
            object.__setattr__(self, "salt", f"{self.served.name}/{self.served.version}/".encode())

    @property
    def version(self) -> str:
        """The challenger's version."""
        return self.served.version

    def routes_to_canary(self, headers: Iterable[tuple[bytes, bytes]] | None) -> bool:
        """Whether this request goes to the canary: by its client key when it sends one, else at random."""
        if self.share <= 0.0:
            return False
        if self.share >= 1.0:
            return True
        for name, value in headers or ():
            if name == _CLIENT:
                return zlib.crc32(self.salt + value) / _SCALE < self.share
        return random.random() < self.share


class LiveHolder:
    """Holds the one current :class:`LiveAssignment` (None: no challenger under live evaluation)."""

    def __init__(self) -> None:
        self._current: LiveAssignment | None = None

    @property
    def current(self) -> LiveAssignment | None:
        """The assignment now, read once per request."""
        return self._current

    def swap(self, assignment: LiveAssignment | None) -> LiveAssignment | None:
        """Replace the assignment (one reference assignment)."""
        previous, self._current = self._current, assignment
        return previous


# Counters of one role and version over a stats interval, in ``live_stats``'s column order.
COUNTERS: Final = ("attempts", "rows", "raised", "timeouts", "invalid", "shed", "latency_sum_s")


@dataclass(slots=True)
class _Counts:
    attempts: int = 0
    rows: int = 0
    raised: int = 0
    timeouts: int = 0
    invalid: int = 0
    shed: int = 0
    latency_sum_s: float = 0.0


class LiveStats:
    """Per (role, model name, version) counts since the last :meth:`take`; safe from any thread."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], _Counts] = {}
        self._since = datetime.now(UTC)

    def add(self, role: str, served: ServedModel, **counts: float) -> None:
        """Add to the counters (``COUNTERS`` names) of a role and version."""
        key = (role, served.name, served.version)
        with self._lock:
            current = self._counts.get(key)
            if current is None:
                current = self._counts[key] = _Counts()
            for name, value in counts.items():
                setattr(current, name, getattr(current, name) + value)

    def add_answer(self, role: str, served: ServedModel, rows: int, latency_s: float) -> None:
        """One answered request of a route (the request path's one call: no keyword arguments)."""
        key = (role, served.name, served.version)
        with self._lock:
            current = self._counts.get(key)
            if current is None:
                current = self._counts[key] = _Counts()
            current.attempts += 1
            current.rows += rows
            current.latency_sum_s += latency_s

    def take(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The ``live_stats`` rows of the interval that ends now, and a new interval begun."""
        now = now or datetime.now(UTC)
        with self._lock:
            counts, self._counts = self._counts, {}
            since, self._since = self._since, now
        return [
            {
                "replica": self.replica,
                "role": role,
                "model_version": version,
                "model_name": name,
                "window_start": since,
                "window_end": now,
                **{column: getattr(value, column) for column in COUNTERS},
            }
            for (role, name, version), value in counts.items()
        ]
