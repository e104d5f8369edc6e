"""The closed loop end to end, with real processes on free loopback ports and the embedded defaults.

Stack up (Prefect server + worker, MLflow server, API, alert receiver), deploy, first champion through
the deployment, then drifted traffic: the monitor emits `degraded`, the webhook notification reaches
the local receiver, the automation runs the retrain, the gate promotes a new version, and the API
serves it; steady client traffic runs throughout with zero failed requests, and every answered
prediction is in the prediction log.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from sqlalchemy import select

from adapters import prediction_log
from embedded import demo, stack
from embedded.receiver import read_alerts
from flows.deploy import deploy
from reggaeton.schema import EXAMPLE_SONGS
from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# On the session's `loop_stack`, with the other module that uses it: one worker, one stack.
pytestmark = pytest.mark.xdist_group("loop_stack")


@dataclass
class Traffic:
    """Steady client traffic in a thread: every answer is recorded, every failure too."""

    url: str
    ids: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for song in itertools.cycle(EXAMPLE_SONGS):
                if self._stop.wait(0.2):
                    return
                try:
                    response = client.post(f"{self.url}/predict", json=song)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                for prediction in response.json()["predictions"]:
                    self.ids.append(prediction["id"])
                    self.versions.add(str(prediction["model_version"]))

    def stop(self) -> None:
        self._stop.set()

    def saw(self, version: str) -> bool | None:
        return True if version in self.versions or self.failures else None


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_degraded_to_new_champion_served(loop_stack: Settings) -> None:
    settings = loop_stack
    deploy(settings, project_dir=REPO_ROOT)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    report = demo.DemoReport(started_at=datetime.now(UTC))
    first = demo.ensure_champion(settings, client, report)
    report.before = demo.version_info(client, settings, first)

    traffic = Traffic(stack.api_url(settings))
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    try:
        demo.run_loop(settings, client, report)
        # run_loop returns once /model reports the new version; let the client see it too (its next
        # request is at most 0.2 s away) before stopping it, or the check below races the switch.
        if report.after is not None:
            version = report.after.version
            demo.wait_until(
                f"client traffic answered by version {version}", lambda: traffic.saw(version), 30, 0.2
            )
    finally:
        traffic.stop()
        thread.join(timeout=30)

    # Retrained by the automation, promoted by the gate, served by the API.
    assert report.retrain_state == "Completed"
    assert report.after is not None and report.after.version != first
    assert report.served_after == report.after.version
    assert {first, report.after.version} <= traffic.versions
    # The summary shows each version's own held-out figures (read from its logged model).
    assert report.before is not None and "pr_auc" in report.before.metrics
    assert "pr_auc" in report.after.metrics
    assert "no metrics recorded" not in demo.summary(settings, report)

    # The notifications reached the local webhook.
    subjects = [alert["subject"] for alert in read_alerts(settings.alerts_path)]
    assert any(s.startswith("[reggaeton] model degraded") for s in subjects), subjects
    assert "[reggaeton] new champion promoted" in subjects, subjects

    # Zero failed requests, and every answered prediction is in the log.
    assert traffic.failures == []
    assert len(traffic.ids) > 50
    engine = prediction_log.make_engine(settings.prediction_log_url)

    def logged() -> bool | None:
        with engine.connect() as connection:
            rows = {r[0] for r in connection.execute(select(prediction_log.predictions.c.id))}
        return True if set(traffic.ids) <= rows else None

    demo.wait_until("every answered prediction in the log", logged, timeout_s=30, every_s=1)
    engine.dispose()
