"""``POST /feedback``: the true label of an earlier prediction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter, HTTPException, status
from sqlalchemy.exc import OperationalError

from serving.deps import FeedbackDep, ServicesDep
from serving.feedback_store import (
    ArchivedPredictionError,
    ConflictingFeedbackError,
    UnknownPredictionError,
    record_feedback,
)
from serving.schemas import FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])

_FLUSH_WAIT_S = 5.0  # how long a label waits for its prediction's row to reach the database


@router.post(
    "/feedback",
    responses={
        400: {"description": "The body cannot be decoded (not UTF-8 text)."},
        401: {"description": "Feedback token required."},
        404: {"description": "Unknown prediction id."},
        409: {"description": "A different label was already recorded."},
        410: {"description": "The prediction was archived (older than the log's retention): no label now."},
        503: {"description": "The prediction log database is unavailable or catching up; retry later."},
    },
)
async def post_feedback(body: FeedbackRequest, services: ServicesDep, _: FeedbackDep) -> FeedbackResponse:
    """Record the true label of a prediction (repeating the same label is a no-op)."""

    def record() -> Awaitable[bool]:
        return asyncio.to_thread(record_feedback, services.engine, body.prediction_id, body.label)

    retry = {"Retry-After": str(services.settings.serving.retry_after_s)}
    try:
        try:
            created = await record()
        except UnknownPredictionError:
            # A prediction answered a moment ago may still be queued: write the queue, then look again.
            try:
                await asyncio.wait_for(services.log.flush(), timeout=_FLUSH_WAIT_S)
            except TimeoutError:  # the log database is behind or unavailable (the rows wait in the spool)
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE, "the prediction log is catching up", headers=retry
                ) from None
            created = await record()
    except OperationalError:  # the log database is unavailable: the label can be sent again later
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the prediction log database is unavailable", headers=retry
        ) from None
    except UnknownPredictionError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown prediction id {body.prediction_id}"
        ) from None
    except ArchivedPredictionError as exc:
        raise HTTPException(status.HTTP_410_GONE, str(exc)) from None
    except ConflictingFeedbackError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return FeedbackResponse(prediction_id=body.prediction_id, label=body.label, created=created)
