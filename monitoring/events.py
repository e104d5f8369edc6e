"""Alerts become Prefect events (``names.Event.DEGRADED`` / ``DRIFTED``) on the configured Prefect server."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from monitoring.policy import Alert, AlertKind
from reggaeton import names

logger = logging.getLogger(__name__)

EVENT_NAMES: dict[AlertKind, str] = {
    AlertKind.DEGRADED: names.Event.DEGRADED,
    AlertKind.DRIFTED: names.Event.DRIFTED,
}


def resource(model_name: str, model_version: str) -> dict[str, str]:
    """The event's resource: one id per registered model, the version as a label."""
    return {
        "prefect.resource.id": f"{names.Event.RESOURCE_PREFIX}.{model_name}",
        "prefect.resource.name": model_name,
        "reggaeton.model.version": model_version,
    }


def emit_alerts(alerts: Sequence[Alert], model_name: str, api_url: str, timeout_s: float = 30.0) -> list[Any]:
    """Emit one event per ``degraded``/``drifted`` alert to ``api_url`` and wait until they are sent.

    ``insufficient data`` is not an event (it is stored and logged only).

    Returns:
        The emitted ``prefect.events.Event`` objects.
    """
    to_send = [alert for alert in alerts if alert.kind in EVENT_NAMES]
    if not to_send:
        return []
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Without an explicit URL, Prefect would send events to a throw-away ephemeral server.
    emitted = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for alert in to_send:
            event = emit_event(
                event=EVENT_NAMES[alert.kind],
                resource=resource(model_name, alert.model_version),
                payload=alert.payload(),
            )
            if event is None:
                logger.error("Prefect did not accept event %s for %s", alert.kind, api_url)
                continue
            logger.info("emitted %s (%s %s=%s)", event.event, alert.source, alert.metric, alert.value)
            emitted.append(event)
        EventsWorker.drain_all(timeout=timeout_s)
    return emitted
