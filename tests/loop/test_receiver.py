"""The local alert receiver: a webhook post shows up in its file and on GET /alerts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from embedded.receiver import make_server, parse_alert, read_alerts
from flows.automations import WEBHOOK_JSON


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "alerts.jsonl"
    server: ThreadingHTTPServer = make_server(path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_parse_slack_style_payload() -> None:
    alert = parse_alert(b'{"text": "[reggaeton] model degraded\\nmetric: roc_auc"}', "application/json")
    assert alert["subject"] == "[reggaeton] model degraded"
    assert alert["body"] == "metric: roc_auc"


def test_parse_plain_text() -> None:
    alert = parse_alert(b"just a line", "text/plain")
    assert (alert["subject"], alert["body"], alert["payload"]) == ("just a line", "", None)


def test_receiver_appends_and_lists(receiver: tuple[str, Path]) -> None:
    url, path = receiver
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    for i in range(3):
        response = httpx.post(f"{url}/alerts", json={"text": f"subject {i}\nbody {i}"})
        assert response.status_code == 200
    stored = read_alerts(path)
    assert [a["subject"] for a in stored] == ["subject 0", "subject 1", "subject 2"]
    assert httpx.get(f"{url}/alerts").json() == stored


def test_prefect_webhook_block_reaches_receiver(receiver: tuple[str, Path]) -> None:
    """The built-in notification block, configured as flows.automations configures it, is understood."""
    url, path = receiver
    block = CustomWebhookNotificationBlock(name="test", url=f"{url}/alerts", json_data=dict(WEBHOOK_JSON))
    block.notify(body="event: reggaeton.model.promoted\nversion: 3", subject="[reggaeton] promoted")
    [alert] = read_alerts(path)
    assert alert["subject"] == "[reggaeton] promoted"
    assert alert["body"] == "event: reggaeton.model.promoted\nversion: 3"
