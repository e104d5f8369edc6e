"""The one place that turns a domain event into a Prefect event: its resource, its emission, its delivery.

Every emitter (the gate, the server, the monitor flow) names the event (``reggaeton.names.Event``) and
its payload; the resource (one id per registered model, the version as a label) and the guard against
Prefect's throw-away ephemeral server live here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from reggaeton import names

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 15.0
# One emission at a time: draining stops Prefect's events worker, which a concurrent emission must not meet.
_EMIT_LOCK = threading.Lock()


def model_resource(model_name: str, version: str | None) -> dict[str, str]:
    """The event's resource: one id per registered model, the version (when there is one) as a label."""
    resource = {
        "prefect.resource.id": f"{names.Event.RESOURCE_PREFIX}.{model_name}",
        "prefect.resource.name": model_name,
    }
    if version is not None:
        resource[names.Event.VERSION_LABEL] = version
    return resource


def deployment_resource(deployment: str) -> dict[str, str]:
    """The resource of an event about a deployment's runs (the watchdog's): one id per deployment."""
    return {
        "prefect.resource.id": f"{names.Event.DEPLOYMENT_RESOURCE_PREFIX}.{deployment}",
        "prefect.resource.name": deployment,
    }


def prefect_api_configured() -> bool:
    """Whether a Prefect API URL is set; without one Prefect would start a throw-away ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit(
    event: str,
    model_name: str,
    version: str | None,
    payload: Mapping[str, Any],
    *,
    drain_timeout_s: float | None = None,
) -> Any | None:
    """Send one event about ``model_name`` version ``version`` to the configured Prefect API.

    Args:
        event: The event name, one of ``names.Event``.
        model_name: The registered model the event is about.
        version: Its version, a label on the resource (None: an event about the model as a whole).
        payload: The event's payload (JSON-serialisable).
        drain_timeout_s: Wait (bounded) until the event has left the process: for processes that may
            exit right after, and for rare events sent from a long-lived server. None: fire and forget.

    Returns:
        The emitted ``prefect.events.Event``, or None when no Prefect API is configured or Prefect
        refused it (logged).
    """
    if not prefect_api_configured():
        logger.warning("no Prefect API URL configured; not sending %s for version %s", event, version)
        return None
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    with _EMIT_LOCK:
        sent = emit_event(event=event, resource=model_resource(model_name, version), payload=dict(payload))
        if sent is None:
            logger.error("Prefect did not accept event %s for version %s", event, version)
            return None
        if drain_timeout_s is not None:
            EventsWorker.drain_all(timeout=drain_timeout_s, at_exit=False)
    return sent


def drain(timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Wait (bounded) until every event emitted so far has left the process."""
    from prefect.events.worker import EventsWorker

    with _EMIT_LOCK:
        EventsWorker.drain_all(timeout=timeout_s, at_exit=False)
