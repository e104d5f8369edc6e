"""Only decided versions are served: the API verifies the champion's signed decision record.

A real SQLite registry and a real uvicorn server: the alias moved by hand, a record copied from another
version, an older decision replayed, a record signed with a key the server does not trust. Each time the
server keeps its champion, says why (/admin/reload), counts it (/metrics), and serves the version once
a decision authorizes it. The event and the alert are checked against a whole stack in
tests/loop/test_unauthorized_champion.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_support import (
    Registry,
    Server,
    free_port,
    make_settings,
    move_by_hand,
    promote,
    run_server,
    sign,
)

from adapters import keys, registry
from embedded.receiver import read_alerts
from flows import promote as promote_flow
from flows.automations import apply_automations
from reggaeton import decision_record, names
from reggaeton.schema import EXAMPLE_SONGS
from reggaeton.settings import Settings
from serving.cache import CACHE_FILE

pytestmark = pytest.mark.slow  # each starts a real server process

SONG = EXAMPLE_SONGS[0]


def _metrics(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


def _value(text: str, sample: str) -> float | None:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _served_version(client: httpx.Client) -> str:
    return str(client.post("/predict", json=SONG).json()["predictions"][0]["model_version"])


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _copy_record(settings: Settings, source: str, target: str) -> None:
    """Put one version's genuine record and signature on another version (a forgery attempt)."""
    client = registry.connect(settings)
    tags = client.get_model_version(names.MODEL_NAME, source).tags
    for tag in (names.Tag.DECISION_RECORD, names.Tag.DECISION_SIGNATURE):
        client.set_model_version_tag(names.MODEL_NAME, target, tag, tags[tag])


def test_a_hand_moved_alias_is_refused_counted_and_served_once_decided(
    tmp_path: Path, registry_versions: Registry
) -> None:
    decided, other, third = registry_versions.good
    promote(registry_versions.settings, decided)
    settings = make_settings(tmp_path / "state", registry_versions.settings)
    with run_server(settings) as server, server.client(headers=server.admin_headers()) as client:
        model = client.get("/model").json()
        assert model["version"] == decided
        decision = model["decision"]
        assert decision["action"] == decision_record.MANUAL and decision["outcome"] == "promoted"
        assert decision["key_id"] == keys.ensure_local_keys(registry_versions.settings).key_id
        sequence = decision["sequence"]
        assert _value(_metrics(server), "reggaeton_served_decision_sequence") == sequence

        move_by_hand(registry_versions.settings, other)
        refused = client.post("/admin/reload").json()
        assert refused["outcome"] == "unauthorized" and refused["version"] == other
        assert f"version {other} has no decision record" in refused["detail"]
        assert _served_version(client) == decided
        # Polling sees it again and again: counted once per move, shown while it lasts.
        time.sleep(3 * settings.serving.poll_interval_s)
        text = _metrics(server)
        assert _value(text, "reggaeton_unauthorized_champions_total") == 1
        assert _value(text, f'reggaeton_champion_alias_unauthorized{{version="{other}"}}') == 1
        assert _value(text, 'reggaeton_model_reloads_total{outcome="unauthorized"}') >= 3  # type: ignore[operator]

        # A record copied from the decided version onto this one names the wrong version.
        _copy_record(registry_versions.settings, decided, other)
        copied = client.post("/admin/reload").json()
        assert copied["outcome"] == "unauthorized"
        assert f"not {names.MODEL_NAME} version {other}" in copied["detail"]

        # Back to the decided version by hand: nothing to refuse any more.
        move_by_hand(registry_versions.settings, decided)
        assert client.post("/admin/reload").json()["outcome"] == "unchanged"
        assert "reggaeton_champion_alias_unauthorized{" not in _metrics(server)

        # A second move by hand is a new alert; the operator's decision then makes it champion.
        move_by_hand(registry_versions.settings, third)
        assert client.post("/admin/reload").json()["outcome"] == "unauthorized"
        assert _value(_metrics(server), "reggaeton_unauthorized_champions_total") == 2
        promote(registry_versions.settings, third)
        _until(lambda: _served_version(client) == third, 30, f"version {third} once decided")
        assert client.get("/model").json()["decision"]["sequence"] > sequence


def test_an_older_decision_cannot_be_replayed(tmp_path: Path, registry_versions: Registry) -> None:
    old, new = registry_versions.good[0], registry_versions.good[1]
    promote(registry_versions.settings, old)  # a genuine decision, older than the next one
    promote(registry_versions.settings, new)
    settings = make_settings(tmp_path / "state", registry_versions.settings)
    with run_server(settings) as server, server.client(headers=server.admin_headers()) as client:
        assert _served_version(client) == new
        # The old version still carries its genuine, validly signed record: pointing back at it is a replay.
        move_by_hand(registry_versions.settings, old)
        replay = client.post("/admin/reload").json()
        assert replay["outcome"] == "unauthorized"
        assert "is not newer than decision" in replay["detail"]
        assert _served_version(client) == new


def test_a_record_signed_with_another_key_is_refused(tmp_path: Path, registry_versions: Registry) -> None:
    served, forged = registry_versions.good[2], registry_versions.good[0]
    promote(registry_versions.settings, served)
    settings = make_settings(tmp_path / "state", registry_versions.settings)
    intruder = decision_record.generate()  # whoever can write tags, but does not hold the private key
    with run_server(settings) as server, server.client(headers=server.admin_headers()) as client:
        sign(registry_versions.settings, forged, key=intruder)
        move_by_hand(registry_versions.settings, forged)
        refused = client.post("/admin/reload").json()
        assert refused["outcome"] == "unauthorized"
        assert f"signed by key {intruder.key_id}, which is not trusted" in refused["detail"]
        assert _served_version(client) == served
    promote(registry_versions.settings, served)  # leave the session registry decided


def test_a_restart_serves_the_cached_decided_champion_not_the_moved_alias(
    tmp_path: Path, registry_versions: Registry
) -> None:
    decided, other = registry_versions.good[1], registry_versions.good[2]
    promote(registry_versions.settings, decided)
    settings = make_settings(tmp_path / "state", registry_versions.settings)
    with run_server(settings):
        _until(lambda: (settings.model_cache_dir / CACHE_FILE).is_file(), 60, "the model cache")
    move_by_hand(registry_versions.settings, other)
    restarted = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"port": free_port()})}
    )
    with run_server(restarted) as server, server.client() as client:
        model = client.get("/model").json()
        assert (model["source"], model["version"]) == ("cache", decided)
        _until(
            lambda: _value(_metrics(server), "reggaeton_unauthorized_champions_total") == 1, 30, "the refusal"
        )
        assert _served_version(client) == decided
    # Without a trusted key the cached champion is not served either (it would be trusted blindly).
    untrusted = restarted.model_copy(
        update={
            "signing": restarted.signing.model_copy(
                update={"public_keys": decision_record.generate().public_text()}
            ),
            "serving": restarted.serving.model_copy(update={"port": free_port()}),
        }
    )
    with run_server(untrusted, ready=False) as server:
        assert httpx.get(server.url + "/ready", timeout=10).status_code == 503
    promote(registry_versions.settings, decided)


def _unauthorized_events(prefect_api_url: str, version: str, since: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{prefect_api_url}/events/filter",
        json={"filter": {"event": {"name": [names.Event.UNAUTHORIZED_CHAMPION]}}, "limit": 50},
        timeout=10,
    )
    response.raise_for_status()
    return [
        event
        for event in response.json()["events"]
        if event["resource"].get(names.Event.VERSION_LABEL) == version and event["occurred"] >= since
    ]


def test_a_hand_moved_alias_raises_one_event_and_an_alert_while_the_champion_serves(
    tmp_path: Path, registry_versions: Registry, prefect_api_url: str, receiver: tuple[int, Path]
) -> None:
    """The embedded stack's path end to end: the operator's signed promotion (the real flow, under the
    decision lock), the API verifying it, an alias moved by hand, the event on the real Prefect server,
    the automation's notification at the local receiver."""
    port, alerts = receiver
    notify = Settings(
        state_dir=tmp_path / "automations", prefect={"api_url": prefect_api_url, "alert_receiver_port": port}
    )
    apply_automations(notify)
    decided, other = registry_versions.good[0], registry_versions.good[2]
    promote_flow.promote_version(decided, "the champion", by="ops", settings=registry_versions.settings)
    settings = make_settings(tmp_path / "state", registry_versions.settings)
    with (
        run_server(settings, extra_env={"PREFECT_API_URL": prefect_api_url}) as server,
        server.client() as client,
    ):
        assert _served_version(client) == decided
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 5))
        move_by_hand(registry_versions.settings, other)

        def alerted() -> list[dict[str, Any]]:
            return [
                a
                for a in read_alerts(alerts)
                if "without a decision" in a["subject"] and f"'version': '{other}'" in a["body"]
            ]

        _until(lambda: bool(alerted()), 90, "the unauthorized-champion alert at the receiver")
        # Many polls later: still the decided champion, still one event (the replica announces a move once).
        time.sleep(4 * settings.serving.poll_interval_s)
        assert _served_version(client) == decided
        _until(lambda: len(_unauthorized_events(prefect_api_url, other, since)) >= 1, 30, "the event")
        [event] = _unauthorized_events(prefect_api_url, other, since)
        assert event["payload"]["serving_version"] == decided
        assert "has no decision record" in event["payload"]["reason"]
        assert len(alerted()) == 1
    promote(registry_versions.settings, decided)
