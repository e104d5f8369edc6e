"""Prefect events sent by the server (only to a configured Prefect API; never from the request path)."""

from __future__ import annotations

from adapters import prefect_events
from reggaeton import names


def emit_reload_failed(model_name: str, version: str, reason: str, serving_version: str | None) -> bool:
    """Send ``reggaeton.model.reload_failed`` for a refused version; blocking, call it from a thread.

    Reload failures are rare, so it waits (bounded) until the event has left the process.

    Returns:
        Whether the event was handed to Prefect.
    """
    payload = {"version": version, "reason": reason[:2000], "serving_version": serving_version}
    sent = prefect_events.emit(
        names.Event.RELOAD_FAILED,
        model_name,
        version,
        payload,
        drain_timeout_s=prefect_events.DRAIN_TIMEOUT_S,
    )
    return sent is not None
