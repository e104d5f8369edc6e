"""``/admin``: operations behind the admin token."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import AdminDep, ServicesDep
from serving.schemas import ReloadResponse

router = APIRouter(prefix="/admin", tags=["admin"], responses={401: {"description": "Admin token required."}})


@router.post("/reload")
async def reload(services: ServicesDep, _: AdminDep) -> ReloadResponse:
    """Check the registry now and swap to a new champion (retries a version refused earlier)."""
    result = await services.refresher.check(force=True)
    return ReloadResponse(outcome=result.outcome, version=result.version, detail=result.detail)
