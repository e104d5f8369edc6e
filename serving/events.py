"""Prefect events sent by the server (only to a configured Prefect API; never from the request path)."""

from __future__ import annotations

from adapters import prefect_events
from reggaeton import names


def _emit_refused(
    event: str, model_name: str, version: str, reason: str, serving_version: str | None
) -> bool:
    """A refused version's event (rare): waits (bounded) until it has left the process."""
    payload = {"version": version, "reason": reason[:2000], "serving_version": serving_version}
    sent = prefect_events.emit(
        event, model_name, version, payload, drain_timeout_s=prefect_events.DRAIN_TIMEOUT_S
    )
    return sent is not None


def emit_reload_failed(model_name: str, version: str, reason: str, serving_version: str | None) -> bool:
    """Send ``reggaeton.model.reload_failed`` for a version that failed to load or check; blocking.

    Returns:
        Whether the event was handed to Prefect.
    """
    return _emit_refused(names.Event.RELOAD_FAILED, model_name, version, reason, serving_version)


def emit_unauthorized_champion(
    model_name: str, version: str, reason: str, serving_version: str | None
) -> bool:
    """Send ``reggaeton.model.unauthorized_champion`` (once per alias move, from each replica); blocking.

    Returns:
        Whether the event was handed to Prefect.
    """
    return _emit_refused(names.Event.UNAUTHORIZED_CHAMPION, model_name, version, reason, serving_version)


def emit_log_state(model_name: str, available: bool, detail: str, spool_bytes: int) -> bool:
    """Send ``reggaeton.serving.log_unavailable`` or ``log_recovered``; blocking, call it from a thread.

    Args:
        model_name: The served model (the event's resource, like every server event).
        available: False when writes to the log database start failing, True when they succeed again.
        detail: The write error (for a recovery, the error that had stopped the writes).
        spool_bytes: Bytes in the journal when the state changed.

    Returns:
        Whether the event was handed to Prefect.
    """
    name = names.Event.LOG_RECOVERED if available else names.Event.LOG_UNAVAILABLE
    payload = {"error": detail[:2000], "spool_bytes": spool_bytes}
    sent = prefect_events.emit(
        name, model_name, None, payload, drain_timeout_s=prefect_events.DRAIN_TIMEOUT_S
    )
    return sent is not None


def emit_challenger_failing(model_name: str, role: str, version: str, kind: str, detail: str) -> bool:
    """Send ``reggaeton.serving.challenger_failing`` once per episode; blocking, call it from a thread.

    Args:
        model_name: The served model.
        role: ``shadow`` (scoring requests off the path) or ``canary`` (answering a share of them).
        version: The failing version.
        kind: raised, timeout, invalid (not a probability) or load (refused when loading).
        detail: The first failure's message.

    Returns:
        Whether the event was handed to Prefect.
    """
    payload = {"role": role, "kind": kind, "detail": detail[:2000], "version": version}
    sent = prefect_events.emit(
        names.Event.CHALLENGER_FAILING,
        model_name,
        version,
        payload,
        drain_timeout_s=prefect_events.DRAIN_TIMEOUT_S,
    )
    return sent is not None
