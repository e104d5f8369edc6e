"""Which Prefect server this package's clients, flows and events talk to: the one place that chooses it.

Kept apart from :mod:`adapters.prefect_api` so that a process which only needs the URL (the API server,
whose start-up time counts) does not import Prefect's client (~1.5 s) to learn it.
"""

from __future__ import annotations

import os

from reggaeton.settings import Settings


def api_url(settings: Settings, *, keep_configured: bool = False) -> str:
    """The Prefect API URL to talk to: the only function that chooses it.

    Args:
        settings: The settings; their ``prefect_api_url`` is the stack's server.
        keep_configured: Prefer the URL Prefect already has (``PREFECT_API_URL`` from the environment,
            a profile or an enclosing block) and fall back on the settings' only without one: for the
            command-line entry points, which a person may aim at any server. Off for the tools that
            manage the stack the settings describe (deploy, demo, automations, the monitor's events).
    """
    if keep_configured:
        from prefect.settings import PREFECT_API_URL

        configured: str | None = PREFECT_API_URL.value()
        if configured:
            return configured
    return settings.prefect_api_url


def export_api_url(settings: Settings, *, only_explicit: bool = False) -> None:
    """Set ``PREFECT_API_URL`` for this process and its children unless the environment already has one.

    Args:
        settings: The settings.
        only_explicit: Export only a URL set in the settings (``REGGAETON_PREFECT__API_URL``), not the
            local default: for the API server, which sends events only where it was told to.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    if only_explicit and not settings.prefect.api_url:
        return
    os.environ["PREFECT_API_URL"] = api_url(settings)
