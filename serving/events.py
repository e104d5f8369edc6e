"""Prefect events sent by the server (only to a configured Prefect API; never from the request path)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from reggaeton import names

logger = logging.getLogger(__name__)

_DRAIN_TIMEOUT_S = 15.0
# One emission at a time: draining stops Prefect's events worker, which a concurrent send must not meet.
_EMIT_LOCK = threading.Lock()


def prefect_api_configured() -> bool:
    """Whether a Prefect API URL is set; without one Prefect would start a throw-away ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit_reload_failed(model_name: str, version: str, reason: str, serving_version: str | None) -> bool:
    """Send ``reggaeton.model.reload_failed`` for a refused version; blocking, call it from a thread.

    Returns:
        Whether the event was handed to Prefect's events worker.
    """
    if not prefect_api_configured():
        logger.warning(
            "no Prefect API URL configured; not sending %s for version %s", names.Event.RELOAD_FAILED, version
        )
        return False
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    payload: dict[str, Any] = {
        "version": version,
        "reason": reason[:2000],
        "serving_version": serving_version,
    }
    with _EMIT_LOCK:
        event = emit_event(
            event=names.Event.RELOAD_FAILED,
            resource={
                "prefect.resource.id": f"{names.Event.RESOURCE_PREFIX}.{model_name}",
                "prefect.resource.name": model_name,
                "reggaeton.model.version": version,
            },
            payload=payload,
        )
        if event is None:
            return False
        # Reload failures are rare: wait (bounded) until this one has left the process.
        EventsWorker.drain_all(timeout=_DRAIN_TIMEOUT_S, at_exit=False)
    return True


def emit_log_state(model_name: str, available: bool, detail: str, spool_bytes: int) -> bool:
    """Send ``reggaeton.serving.log_unavailable`` or ``log_recovered``; blocking, call it from a thread.

    Args:
        model_name: The served model (the event's resource, like every server event).
        available: False when writes to the log database start failing, True when they succeed again.
        detail: The write error (for a recovery, the error that had stopped the writes).
        spool_bytes: Bytes in the journal when the state changed.

    Returns:
        Whether the event was handed to Prefect's events worker.
    """
    name = names.Event.LOG_RECOVERED if available else names.Event.LOG_UNAVAILABLE
    if not prefect_api_configured():
        logger.warning("no Prefect API URL configured; not sending %s", name)
        return False
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    with _EMIT_LOCK:
        event = emit_event(
            event=name,
            resource={
                "prefect.resource.id": f"{names.Event.RESOURCE_PREFIX}.{model_name}",
                "prefect.resource.name": model_name,
            },
            payload={"error": detail[:2000], "spool_bytes": spool_bytes},
        )
        if event is None:
            return False
        EventsWorker.drain_all(timeout=_DRAIN_TIMEOUT_S, at_exit=False)
    return True
