"""Alerts become Prefect events (``names.Event.DEGRADED`` / ``DRIFTED``) on the configured Prefect server."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from adapters import prefect_events
from adapters.prefect_api import prefect_api_at
from monitoring.policy import Alert, AlertKind
from reggaeton import names

logger = logging.getLogger(__name__)

EVENT_NAMES: dict[AlertKind, str] = {
    AlertKind.DEGRADED: names.Event.DEGRADED,
    AlertKind.DRIFTED: names.Event.DRIFTED,
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
    # Without an explicit URL, Prefect would send events to a throw-away ephemeral server.
    emitted = []
    with prefect_api_at(api_url):
        for alert in to_send:
            kind = EVENT_NAMES[alert.kind]
            event = prefect_events.emit(kind, model_name, alert.model_version, alert.payload())
            if event is not None:
                logger.info("emitted %s (%s %s=%s)", kind, alert.source, alert.metric, alert.value)
                emitted.append(event)
        prefect_events.drain(timeout_s)
    return emitted
