"""``POST /predict`` without the framework's per-request machinery, for valid requests only.

Under load, FastAPI's routing, exception and exit-stack middlewares, request/response objects and
dependency resolution held the GIL for about half of a one-song request (py-spy), and FastAPI's
outer error and telemetry middlewares another tenth. :class:`ServingApp` puts this layer just inside
the middlewares registered on the app (``add_middleware``: metrics, and any CORS, tracing or
request-id middleware added later) and in front of all of FastAPI's own machinery: every registered
middleware sees every request, the fast ones included, and nothing can skip them by accident.

The layer answers a valid request itself with the route's own functions (:func:`receive_body`,
``parse_songs`` and the prediction service); everything else goes to the framework with its body
replayed: a configured API key, a body over the limit, a request that fails to parse, no model yet,
a prediction log that cannot take rows.
So errors keep exactly the route's status codes and messages, and the FastAPI route stays the
documented contract (OpenAPI) and the one place that maps errors to responses.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reggaeton.names import REPLICA_HEADER
from serving.log_writer import LogUnavailableError
from serving.parsing import parse_songs, receive_body, response_body
from serving.service import NoModelError

PATH = "/predict"
_JSON = (b"content-type", b"application/json")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_FAILED = b"Internal Server Error"
# What the route answers, not the fast path: 4xx with its messages, 503 without a model or while the
# prediction log cannot take rows (with Retry-After). None of these scored or logged anything.
_FOR_THE_ROUTE = (RequestValidationError, HTTPException, ClientDisconnect, NoModelError, LogUnavailableError)


async def _send(
    send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes], replica: tuple[bytes, bytes]
) -> None:
    headers = [content_type, (b"content-length", str(len(body)).encode()), replica]
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


def _naming(send: Send, replica: tuple[bytes, bytes]) -> Send:
    """A ``send`` that adds the replica header to the response it starts."""

    async def named(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), replica]}
        await send(message)

    return named


class PredictFastPath:
    """Answers valid ``POST /predict`` requests directly; hands every other request to ``framework``."""

    def __init__(self, framework: ASGIApp, state: State) -> None:
        self.framework = framework  # FastAPI's own middlewares and routes
        self.state = state  # the app's state, where the lifespan puts the services
        self.answered = 0  # requests this layer answered itself (tests and operators can tell)
        self._replica: tuple[bytes, bytes] | None = None  # the header, once the services exist

    def _header(self, services: Any) -> tuple[bytes, bytes]:
        if self._replica is None:
            self._replica = (REPLICA_HEADER.encode(), services.settings.replica_name.encode())
        return self._replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Any = getattr(self.state, "services", None)
        if services is None:  # before the lifespan started (or outside a server): nothing to name yet
            await self.framework(scope, receive, send)
            return
        replica = self._header(services)
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or services.settings.serving.api_key is not None
        ):
            await self.framework(scope, receive, _naming(send, replica) if scope["type"] == "http" else send)
            return
        serving = services.settings.serving
        received: list[Message] = []
        try:
            body = await receive_body(scope, receive, serving.max_body_bytes, received)
            predictions = await services.predictions.predict(
                parse_songs(body, serving.max_batch), scope["headers"]
            )
        except _FOR_THE_ROUTE:  # nothing was scored or logged: the route answers, with the same body
            await self.framework(scope, _replaying(received, receive), _naming(send, replica))
            return
        except Exception:  # a model that fails to score (the batcher logged it once for the whole batch)
            await _send(send, 500, _FAILED, _TEXT, replica)
            return
        # Counted before the answer leaves: a client that reads the count once it has its answer (a test
        # in the same process) must not race the rest of this coroutine.
        self.answered += 1
        await _send(send, 200, response_body(predictions), _JSON, replica)


class ServingApp(FastAPI):
    """FastAPI with :class:`PredictFastPath` inside the registered middlewares, ahead of FastAPI's own.

    The stack, outermost first: every ``add_middleware`` middleware (in Starlette's order), the fast
    path, then FastAPI's stack without them (server errors, telemetry, exceptions, routes).
    """

    fast_path: PredictFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            # Starlette's entry, not FastAPI's: FastAPI 0.150 asks OpenTelemetry on every request whether
            # its own tracing is on (and wraps the request when it is), which cost the fast path a quarter
            # of its CPU here. The registered middlewares still run: a tracing middleware added with
            # add_middleware sees these requests like any other.
            if self.root_path:
                scope["root_path"] = self.root_path
            await Starlette.__call__(self, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        """Build the stack above; called by Starlette once, on the first request or lifespan event."""
        registered, self.user_middleware = self.user_middleware, []
        try:
            framework = super().build_middleware_stack()
        finally:
            self.user_middleware = registered
        self.fast_path = PredictFastPath(framework, self.state)
        app: ASGIApp = self.fast_path
        for cls, args, kwargs in reversed(registered):
            app = cls(app, *args, **kwargs)
        return app
