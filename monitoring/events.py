"""Alerts become Prefect events (``names.Event.DEGRADED`` / ``DRIFTED``) on the configured Prefect server."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from adapters import prefect_events
from adapters.prefect_api import prefect_api_at
from monitoring.policy import Alert, AlertKind, Retrain, RetrainAction, VersionState, describe
from reggaeton import names

logger = logging.getLogger(__name__)

EVENT_NAMES: dict[AlertKind, str] = {
    AlertKind.DEGRADED: names.Event.DEGRADED,
    AlertKind.DRIFTED: names.Event.DRIFTED,
}


def alert_payload(alert: Alert, state: VersionState | None, retrain: Retrain | None) -> dict[str, Any]:
    """An alert's event payload; a ``degraded`` one also says since when and what happens to the retrain."""
    payload = alert.payload()
    if alert.kind is not AlertKind.DEGRADED or state is None or retrain is None:
        return payload
    since = state.since.isoformat(timespec="seconds") if state.since else None
    summary = f"version {alert.model_version} degraded since {since}: {describe(alert)}; {retrain.reason}"
    return {**payload, "degraded_since": since, "retrain": retrain.payload(), "summary": summary}


def suppressed_payload(state: VersionState, retrain: Retrain) -> dict[str, Any]:
    """The payload of ``reggaeton.model.retrain_suppressed``: why, and from when a retrain is allowed."""
    since = state.since.isoformat(timespec="seconds") if state.since else None
    return {
        "model_version": state.model_version,
        "degraded_since": since,
        "reason": state.reason,
        "retrain": retrain.payload(),
        "summary": f"version {state.model_version} still degraded since {since} ({state.reason}); "
        f"retrain suppressed: {retrain.reason}",
    }


def emit_alerts(
    alerts: Sequence[Alert],
    model_name: str,
    api_url: str,
    timeout_s: float = 30.0,
    *,
    state: VersionState | None = None,
    retrain: Retrain | None = None,
) -> list[Any]:
    """Emit one event per ``degraded``/``drifted`` alert to ``api_url`` and wait until they are sent.

    ``insufficient data`` is not an event (it is stored and logged only). A ``degraded`` alert's payload
    carries the version's state and the retrain's fate (``alert_payload``); a retrain the debounce
    window suppresses is also announced as ``reggaeton.model.retrain_suppressed``, which notifies.

    Returns:
        The emitted ``prefect.events.Event`` objects.
    """
    to_send = [
        (EVENT_NAMES[alert.kind], alert.model_version, alert_payload(alert, state, retrain))
        for alert in alerts
        if alert.kind in EVENT_NAMES
    ]
    degraded = any(alert.kind is AlertKind.DEGRADED for alert in alerts)
    if degraded and state is not None and retrain is not None and retrain.action is RetrainAction.SUPPRESSED:
        to_send.append(
            (names.Event.RETRAIN_SUPPRESSED, state.model_version, suppressed_payload(state, retrain))
        )
    if not to_send:
        return []
    # Without an explicit URL, Prefect would send events to a throw-away ephemeral server.
    emitted = []
    with prefect_api_at(api_url):
        for kind, version, payload in to_send:
            event = prefect_events.emit(kind, model_name, version, payload)
            if event is not None:
                logger.info("emitted %s for version %s", kind, version)
                emitted.append(event)
        prefect_events.drain(timeout_s)
    return emitted
