"""FastAPI dependencies: the services, the served model, and the three credentials (one per purpose)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving.holder import ServedModel
from serving.service import Services

_admin_scheme = HTTPBearer(auto_error=False, description="The admin token (REGGAETON_SERVING__ADMIN_TOKEN).")
_feedback_scheme = HTTPBearer(
    auto_error=False,
    description="The feedback token (REGGAETON_SERVING__FEEDBACK_TOKEN).",
    scheme_name="feedback",
)
_api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Required when REGGAETON_SERVING__API_KEY is set."
)


def services_of(request: Request) -> Services:
    """The app's services (set up by the lifespan); for hot paths that skip dependency injection."""
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    """The app's services, as a dependency."""
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_champion(services: ServicesDep) -> ServedModel:
    """The model being served, or 503 before the first load."""
    served = services.holder.current
    if served is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model loaded yet")
    return served


ChampionDep = Annotated[ServedModel, Depends(get_champion)]


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _require_bearer(credentials: HTTPAuthorizationCredentials | None, expected: str, what: str) -> None:
    if credentials is None or not _same_secret(credentials.credentials, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"{what} token required", headers={"WWW-Authenticate": "Bearer"}
        )


async def require_admin(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_scheme)],
) -> None:
    """Refuse a request without the admin bearer token (constant-time comparison)."""
    _require_bearer(credentials, services.settings.serving.admin_token.get_secret_value(), "admin")


async def require_feedback(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_feedback_scheme)],
) -> None:
    """Refuse a request without the feedback bearer token (the labelling side's own credential)."""
    _require_bearer(credentials, services.settings.serving.feedback_token.get_secret_value(), "feedback")


AdminDep = Annotated[None, Depends(require_admin)]
FeedbackDep = Annotated[None, Depends(require_feedback)]


async def require_api_key(
    services: ServicesDep, api_key: Annotated[str | None, Depends(_api_key_scheme)]
) -> None:
    """Refuse a request without the API key, when one is configured."""
    expected = services.settings.serving.api_key
    if expected is None:
        return
    if api_key is None or not _same_secret(api_key, expected.get_secret_value()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "API key required (X-API-Key header)")
