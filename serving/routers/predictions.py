"""``POST /predict``: score one song or a list of songs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from serving.deps import require_api_key, services_of
from serving.log_writer import LogUnavailableError
from serving.parsing import parse_songs, receive_body, response_body
from serving.schemas import PredictionResponse, request_body_schema
from serving.service import NoModelError


def build_router(max_batch: int, api_key_required: bool) -> APIRouter:
    """The predictions router; the request schema in the docs states this server's batch limit.

    The hot path takes no dependency: FastAPI's dependency resolution cost a fifth of a request's CPU
    (measured with py-spy under load). The API-key check is attached only when a key is configured.
    """
    router = APIRouter(
        tags=["predictions"], dependencies=[Depends(require_api_key)] if api_key_required else []
    )

    @router.post(
        "/predict",
        response_model=PredictionResponse,
        responses={
            401: {"description": "Missing or wrong API key (when one is configured)."},
            413: {"description": "Body larger than the server's limit."},
            422: {
                "description": "A song breaks the feature schema (the error names the field), or the list "
                "holds more songs than maxItems."
            },
            503: {
                "description": "No model loaded yet, or the prediction log cannot take rows now "
                "(its spool is full or unwritable; see Retry-After). Nothing was logged."
            },
        },
        openapi_extra={"requestBody": request_body_schema(max_batch)},
    )
    async def predict(request: Request) -> Response:
        """Probability and label that each song is reggaeton, with a prediction id and the model version."""
        services = services_of(request)
        serving = services.settings.serving
        # The body is parsed here rather than by FastAPI: one JSON parse, one schema check, no pandas.
        body = await receive_body(request.scope, request.receive, serving.max_body_bytes)
        features = parse_songs(body, serving.max_batch)
        try:
            predictions = await services.predictions.predict(features, request.scope["headers"])
        except NoModelError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
        except LogUnavailableError as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                str(exc),
                headers={"Retry-After": str(serving.retry_after_s)},
            ) from None
        return Response(response_body(predictions), media_type="application/json")

    return router
