"""``POST /feedback``: the true label of an earlier prediction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter, HTTPException, status

from serving.deps import AdminDep, ServicesDep
from serving.feedback_store import ConflictingFeedbackError, UnknownPredictionError, record_feedback
from serving.schemas import FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    responses={
        401: {"description": "Admin token required."},
        404: {"description": "Unknown prediction id."},
        409: {"description": "A different label was already recorded."},
    },
)
async def post_feedback(body: FeedbackRequest, services: ServicesDep, _: AdminDep) -> FeedbackResponse:
    """Record the true label of a prediction (repeating the same label is a no-op)."""

    def record() -> Awaitable[bool]:
        return asyncio.to_thread(record_feedback, services.engine, body.prediction_id, body.label)

    try:
        try:
            created = await record()
        except UnknownPredictionError:
            # A prediction answered a moment ago may still be queued: write the queue, then look again.
            await services.log.flush()
            created = await record()
    except UnknownPredictionError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown prediction id {body.prediction_id}"
        ) from None
    except ConflictingFeedbackError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return FeedbackResponse(prediction_id=body.prediction_id, label=body.label, created=created)
