"""``POST /predict`` without the framework's per-request machinery, for valid requests only.

Under load, FastAPI's routing, exception and exit-stack middlewares, request/response objects and
dependency resolution held the GIL for about half of a one-song request (py-spy). This ASGI layer
answers a valid ``POST /predict`` itself with the route's own functions (``parse_songs`` and the
prediction service), and hands everything else to FastAPI unchanged: any other path, a configured
API key, a body without ``Content-Length`` or over the limit, and every request that fails to parse
(its body is replayed), so errors keep exactly the route's status codes and messages. The FastAPI
route stays the documented contract (OpenAPI) and the one that formats errors.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.parsing import parse_songs, response_body
from serving.service import NoModelError

PATH = "/predict"
_JSON = (b"content-type", b"application/json")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


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

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        services: Any = getattr(scope["app"].state, "services", None)
        declared = _content_length(scope)
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
        body = response_body(predictions)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
