"""Turning a ``POST /predict`` body into a float array, with errors that name the offending field."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope

from reggaeton.schema import FEATURE_NAMES
from serving.schemas import SONG_ADAPTER, SONGS_ADAPTER


def _invalid(
    message: str, kind: str = "value_error", loc: Sequence[str | int] = ("body",)
) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": tuple(loc), "msg": message}])


def _prefixed(error: ValidationError) -> RequestValidationError:
    errors = error.errors(include_url=False, include_context=False)
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The ``Content-Length`` of raw ASGI headers, or None when absent or not a number."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def receive_body(
    scope: Scope, receive: Receive, limit: int, received: list[Message] | None = None
) -> bytes:
    """The request body, refused with 413 as soon as it (or its ``Content-Length``) exceeds ``limit``.

    The one body reader of ``POST /predict``, for the route and the fast path alike.

    Args:
        scope: The request's ASGI scope (for its headers).
        receive: The ASGI ``receive`` of the request.
        limit: Most bytes accepted.
        received: When given, every message read is appended to it (so a caller can replay them).

    Raises:
        HTTPException: 413 for a body over the limit.
        ClientDisconnect: the client went away before the body was complete.
    """
    declared = declared_length(scope["headers"])
    if declared is not None and declared > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if received is not None:
            received.append(message)
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_songs(body: bytes, max_batch: int) -> np.ndarray:
    """Validate one song (an object) or a list of songs against the schema; return an (n, 7) float array.

    JSON ``NaN``/``Infinity`` literals are read as numbers and then refused as non-finite for their field.

    Raises:
        RequestValidationError: invalid JSON, a song that breaks the schema, or a list longer than
            ``max_batch`` (-> 422 naming the field).
    """
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson takes a strict subset of what the json module takes (no NaN literal, UTF-8 only, 64-bit
        # integers); the json module decides the rest and words the error.
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _invalid(f"body is not valid JSON: {exc}"[:300], "json_invalid") from None
    try:
        if isinstance(payload, dict):
            SONG_ADAPTER.validate_python(payload)
            songs = [payload]
        elif isinstance(payload, list):
            if not payload:
                raise _invalid("expected at least one song", "too_short")
            if len(payload) > max_batch:  # the schema's maxItems: a validation error like any other
                raise _invalid(f"{len(payload)} songs in one request; at most {max_batch}", "too_long")
            SONGS_ADAPTER.validate_python(payload)
            songs = payload
        else:
            raise _invalid("expected a song (JSON object) or a list of songs", "model_type")
    except ValidationError as exc:
        raise _prefixed(exc) from None
    return np.array([[song[name] for name in FEATURE_NAMES] for song in songs], dtype=np.float64)


def response_body(predictions: Sequence[dict[str, Any]]) -> bytes:
    """The ``POST /predict`` answer, serialised (both the route and the fast path send exactly this)."""
    return orjson.dumps({"predictions": predictions})
