"""``python -m serving``: run the prediction server with uvicorn (one worker per process)."""

from __future__ import annotations

import logging
import os

import uvicorn

from adapters.prefect_url import export_api_url
from reggaeton.settings import Settings
from serving.app import create_app


def main() -> None:
    """Read the settings, then serve on the configured host and port until stopped."""
    settings = Settings()
    logging.basicConfig(
        level=os.environ.get("REGGAETON_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Events (reload_failed) go to the configured Prefect server, never to an ephemeral one.
    export_api_url(settings, only_explicit=True)
    # One worker per process: uvicorn 0.54 with --workers >= 2 leaves TCP_NODELAY unset (Nagle adds ~40 ms
    # per response). Scale with more processes or containers behind a balancer instead.
    uvicorn.run(
        create_app(settings),
        host=settings.serving.host,
        port=settings.serving.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.serving.keep_alive_s,
    )


if __name__ == "__main__":
    main()
