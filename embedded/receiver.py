"""`python -m embedded.receiver`: the local alert receiver the notification webhook points at by default.

It accepts Slack-style webhook posts (``{"text": "subject\\nbody"}``, any JSON or plain text), shows each
alert in the terminal and appends it as one JSON line to ``settings.alerts_path``. ``GET /alerts`` lists
what was received, ``GET /health`` answers when it is up. Loopback only by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from reggaeton import names
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
SERVICE = "alert-receiver"  # in every answer's names.SERVICE_HEADER


def parse_alert(raw: bytes, content_type: str) -> dict[str, Any]:
    """An alert from a webhook body: subject (first line of the text), body (the rest), raw JSON."""
    payload: Any = None
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type or text.lstrip().startswith(("{", "[")):
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            payload = None
    if isinstance(payload, dict) and isinstance(payload.get("text"), str):
        text = payload["text"]
    subject, _, body = text.partition("\n")
    return {
        "received_at": datetime.now(UTC).isoformat(),
        "subject": subject.strip(),
        "body": body.strip(),
        "payload": payload,
    }


class AlertStore:
    """Append-only JSON-lines file of alerts, safe across the server's threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, alert: dict[str, Any]) -> None:
        """Append one alert."""
        line = json.dumps(alert, default=str)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        """Every alert received so far (oldest first)."""
        return read_alerts(self.path)


def read_alerts(path: Path) -> list[dict[str, Any]]:
    """Alerts appended to a receiver file; an absent file means none."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _handler(store: AlertStore) -> type[BaseHTTPRequestHandler]:
    class AlertHandler(BaseHTTPRequestHandler):
        server_version = "reggaeton-alerts/1"

        def _reply(self, status: HTTPStatus, payload: Any) -> None:
            body = json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header(names.SERVICE_HEADER, SERVICE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok"})
            elif self.path == "/alerts":
                self._reply(HTTPStatus.OK, store.read())
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"detail": f"no route {self.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"detail": "body too large"})
                return
            alert = parse_alert(self.rfile.read(length), self.headers.get("Content-Type", ""))
            alert["path"] = self.path
            store.append(alert)
            logger.warning("ALERT %s\n%s", alert["subject"], alert["body"])
            self._reply(HTTPStatus.OK, {"status": "received"})

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

    return AlertHandler


def make_server(path: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A receiver bound to host:port (port 0 picks a free one) writing to `path`."""
    server = ThreadingHTTPServer((host, port), _handler(AlertStore(path)))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: serve until interrupted."""
    settings = Settings()
    parser = argparse.ArgumentParser(description="Local alert receiver for Prefect webhook notifications.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=settings.prefect.alert_receiver_port)
    parser.add_argument(
        "--file", type=Path, default=settings.alerts_path, help="JSON-lines file to append to"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    server = make_server(args.file, args.host, args.port)
    logger.info("alert receiver on http://%s:%d, appending to %s", args.host, server.server_port, args.file)
    # As a container's PID 1 the default SIGTERM does nothing (the kernel ignores a signal PID 1 has no
    # handler for): `docker-compose stop` would wait out the whole grace period, then kill it.
    # serve_forever returns at its next poll once `shutdown` (which waits for that) runs on another thread.
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        logger.info("alert receiver stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
