"""The local alert receiver: a webhook post shows up in its file and on GET /alerts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock

from embedded.manual import wait_until
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


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_as_pid_1_of_its_namespace_sigterm_stops_it_at_once(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """In a container the receiver is PID 1, for which the kernel ignores a signal without a handler:
    without one, `docker-compose stop` waited its whole grace period, then killed it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "embedded.receiver",
        "--port",
        str(port),
        "--file",
        str(tmp_path / "a.jsonl"),
    ]
    # `--fork`: the receiver is the first process of the new PID namespace (exec'd by unshare's child).
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", *command], stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until("the receiver to answer", lambda: _answers(f"http://127.0.0.1:{port}/health"), 60, 0.2)
        (child,) = _children(process.pid)
        assert _ns_pid(child) == 1  # what a container's init is
        os.kill(child, signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)  # it would hang here without the handler
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, stderr
    assert "alert receiver stopped" in stderr


def _answers(url: str) -> bool | None:
    try:
        return True if httpx.get(url, timeout=1).status_code == 200 else None
    except httpx.HTTPError:
        return None


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _ns_pid(pid: int) -> int:
    """The PID of ``pid`` in its own (innermost) namespace."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1])
