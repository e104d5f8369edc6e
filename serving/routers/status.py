"""Liveness, readiness, the served model, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.deps import ChampionDep, ServicesDep
from serving.holder import ServedModel
from serving.schemas import DecisionResponse, ModelResponse

router = APIRouter(tags=["status"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "No model loaded yet, or the prediction log cannot take rows (reason)."}},
)
async def ready(services: ServicesDep, response: Response) -> dict[str, Any]:
    """A model is loaded and the prediction log can take rows: requests can be served."""
    served = services.holder.current
    version = None if served is None else served.version
    reason = "no model loaded yet" if served is None else services.log.unavailable()
    if reason is not None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"ready": False, "model_version": version, "reason": reason}
    return {"ready": True, "model_version": version}


@router.get("/model", responses={503: {"description": "No model loaded yet."}})
async def model(served: ChampionDep) -> ModelResponse:
    """The version being served: name, version, run, when it was loaded, metrics and threshold."""
    return ModelResponse(
        name=served.name,
        version=served.version,
        run_id=served.run_id,
        source=served.source,
        loaded_at=served.loaded_at,
        threshold=served.threshold,
        load_seconds=served.load_seconds,
        scorer=served.scorer_kind,
        metrics=dict(served.metrics),
        decision=_decision(served),
    )


def _decision(served: ServedModel) -> DecisionResponse | None:
    record = served.decision
    if record is None:
        return None
    return DecisionResponse(
        sequence=record.sequence,
        action=record.action,
        outcome=record.outcome,
        previous_champion=record.previous_champion,
        decided_by=record.decided_by,
        decided_at=record.decided_at,
        evidence_digest=record.evidence.digest,
        summary=record.evidence.summary,
        key_id=(served.signature or "").partition(":")[0],
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
