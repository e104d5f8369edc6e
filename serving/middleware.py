"""A pure ASGI middleware counting requests and timing them per route (no per-request task or copy)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ServingMetrics


class MetricsMiddleware:
    """Records ``reggaeton_http_requests`` and the latency histogram; unknown paths share one label."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, routes: Iterable[str]) -> None:
        self.app = app
        self._metrics = metrics
        self._routes = frozenset(routes)
        self._latency = {route: metrics.latency.labels(route=route) for route in self._routes}
        self._latency["other"] = metrics.latency.labels(route="other")
        self._counters: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self._routes else "other"
        start = time.perf_counter()
        status_code = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self._latency[route].observe(time.perf_counter() - start)
            key = (route, status_code)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self._metrics.requests.labels(
                    route=route, status=str(status_code)
                )
            counter.inc()
