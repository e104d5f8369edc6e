"""``POST /predict`` without the framework's per-request machinery, for valid requests only.

Under load, FastAPI's routing, exception and exit-stack middlewares, request/response objects and
dependency resolution held the GIL for about half of a one-song request (py-spy); the middleware
stack in front of any route (error handling, FastAPI's telemetry check, our metrics) took another
tenth. :class:`ServingApp` hands ``POST /predict`` to this layer before any of it runs. The layer
answers a valid request itself with the route's own functions (``parse_songs`` and the prediction
service) and records the route's metrics; it hands everything else to the framework unchanged: a
configured API key, a body without ``Content-Length`` or over the limit, and every request that
fails to parse (its body is replayed), so errors keep exactly the route's status codes and messages.
The FastAPI route stays the documented contract (OpenAPI) and the one that formats errors.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.log_writer import LogUnavailableError
from serving.metrics import ServingMetrics
from serving.parsing import declared_length, parse_songs, response_body, unavailable_body
from serving.service import NoModelError

PATH = "/predict"
_JSON = (b"content-type", b"application/json")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_FAILED = b"Internal Server Error"


async def _send(
    send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes], *extra: tuple[bytes, bytes]
) -> None:
    headers = [content_type, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replaying(received: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read messages again, then the client's next ones."""
    pending = list(received)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class PredictFastPath:
    """Answers valid ``POST /predict`` requests directly; see the module docstring."""

    def __init__(self, state: State, framework: ASGIApp, metrics: ServingMetrics) -> None:
        self.state = state  # the app's state, where the lifespan puts the services
        self.app = framework  # the whole FastAPI app, middlewares included
        self._served = metrics.requests.labels(route=PATH, status="200")
        self._failed = metrics.requests.labels(route=PATH, status="500")
        self._refused = metrics.requests.labels(route=PATH, status="503")
        self._latency = metrics.latency.labels(route=PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        services: Any = getattr(self.state, "services", None)
        declared = declared_length(scope["headers"])
        if (
            services is None
            or services.settings.serving.api_key is not None
            or declared is None
            or declared > services.settings.serving.max_body_bytes
        ):
            await self.app(scope, receive, send)
            return
        serving = services.settings.serving
        received: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replaying(received, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > serving.max_body_bytes:  # more than it declared: the route answers 413
                await self.app(scope, _replaying(received, receive), send)
                return
            if not message.get("more_body", False):
                break
        try:
            features = parse_songs(b"".join(chunks), serving.max_batch)
        except (RequestValidationError, HTTPException):
            await self.app(scope, _replaying(received, receive), send)
            return
        try:
            predictions = await services.predictions.predict(features)
        except NoModelError:  # nothing was scored or logged: the route answers 503
            await self.app(scope, _replaying(received, receive), send)
            return
        except LogUnavailableError as exc:  # not answered, so nothing logged: retry soon, elsewhere
            retry_after = str(serving.retry_after_s).encode()
            await _send(send, 503, unavailable_body(exc), _JSON, (b"retry-after", retry_after))
            self._refused.inc()
            self._latency.observe(time.perf_counter() - start)
            return
        except Exception:  # a model that fails to score (the batcher logged it once for the whole batch)
            await _send(send, 500, _FAILED, _TEXT)
            self._failed.inc()
            self._latency.observe(time.perf_counter() - start)
            return
        await _send(send, 200, response_body(predictions), _JSON)
        self._served.inc()
        self._latency.observe(time.perf_counter() - start)


class ServingApp(FastAPI):
    """FastAPI, except that ``POST /predict`` reaches :class:`PredictFastPath` before any middleware."""

    fast_path: PredictFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.fast_path is not None
            and scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
        ):
            await self.fast_path(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app without the fast path: FastAPI's middlewares and routes."""
        await super().__call__(scope, receive, send)
