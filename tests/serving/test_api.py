"""Every endpoint and the bad-input matrix, against a real uvicorn on a loopback port."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_support import Registry, Server, make_settings, run_server
from sqlalchemy import func, select

from adapters.prediction_log import ROUTE, ROUTE_CHAMPION, archive_parts, make_engine, predictions
from reggaeton.ids import issued_at, time_ordered_ids
from reggaeton.names import REPLICA_HEADER
from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES, INVALID_EXAMPLE_SONG

SONG = EXAMPLE_SONGS[0]


def test_predict_one_song(served: Server, registry_versions: Registry) -> None:
    with served.client() as client:
        response = client.post("/predict", json=SONG)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["model_version"] == registry_versions.good[0]
    assert 0.0 <= prediction["probability"] <= 1.0
    assert prediction["label"] == int(prediction["probability"] >= 0.5)
    assert len(prediction["id"]) == 36


def test_predict_a_list_keeps_order_and_matches_single_calls(served: Server) -> None:
    with served.client() as client:
        batch = client.post("/predict", json=list(EXAMPLE_SONGS)).json()["predictions"]
        singles = [client.post("/predict", json=song).json()["predictions"][0] for song in EXAMPLE_SONGS]
    assert [p["probability"] for p in batch] == pytest.approx([p["probability"] for p in singles])
    assert len({p["id"] for p in batch + singles}) == len(batch) + len(singles)


def _error_fields(response: httpx.Response) -> set[str]:
    return {error["msg"].split(":", 1)[0] for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (INVALID_EXAMPLE_SONG, "loudness"),  # the challenge's own example: 125.513 dB
        ({k: v for k, v in SONG.items() if k != "tempo"}, "tempo"),  # missing
        ({**SONG, "genre": "reggaeton"}, "genre"),  # extra
        ({**SONG, "energy": "loud"}, "energy"),  # non-numeric
        ({**SONG, "energy": "0.5"}, "energy"),  # a number in a string is not a number
        ({**SONG, "valence": True}, "valence"),  # booleans are not numbers
        ({**SONG, "valence": None}, "valence"),  # null
        ({**SONG, "danceability": 1.5}, "danceability"),  # above range
        ({**SONG, "speechiness": -0.1}, "speechiness"),  # below range
        ({**SONG, "tempo": 0}, "tempo"),  # the lower bound is open
        ({**SONG, "acousticness": [0.1]}, "acousticness"),  # wrong type
        ([SONG, {**SONG, "loudness": 3.0}], "loudness"),  # one bad song in a list
    ],
)
def test_bad_song_gets_422_naming_the_field(served: Server, body: Any, field: str) -> None:
    with served.client() as client:
        response = client.post("/predict", json=body)
    assert response.status_code == 422, response.text
    assert field in _error_fields(response)


@pytest.mark.parametrize(
    ("literal", "field"),
    [("NaN", "energy"), ("Infinity", "energy"), ("-Infinity", "loudness"), ("1e999", "tempo")],
)
def test_json_nan_and_infinity_literals_get_422(served: Server, literal: str, field: str) -> None:
    fields = ", ".join(f'"{k}": {literal if k == field else v}' for k, v in SONG.items())
    with served.client() as client:
        response = client.post(
            "/predict", content="{" + fields + "}", headers={"content-type": "application/json"}
        )
    assert response.status_code == 422, response.text
    assert _error_fields(response) == {field}


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"not json", b"[]", b"42", b'"song"', b"null", b"[[[[[]]]]]", b"[" * 100_00 + b"]" * 100_00],
)
def test_malformed_bodies_get_4xx_never_500(served: Server, content: bytes) -> None:
    with served.client() as client:
        response = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code in (413, 422), response.text


def test_oversize_batch_gets_422_and_oversize_body_413(served: Server) -> None:
    with served.client() as client:
        too_many = client.post("/predict", json=[SONG] * 17)  # max_batch=16 in this fixture
        too_big = client.post(
            "/predict", content=b" " * 5000 + b"{}", headers={"content-type": "application/json"}
        )

        def chunks() -> Any:
            for _ in range(10):
                yield b" " * 1000

        streamed = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert too_many.status_code == 422 and "at most 16" in too_many.text  # the schema's maxItems
    assert too_big.status_code == 413
    assert streamed.status_code == 413


def test_health_ready_model(served: Server, registry_versions: Registry) -> None:
    with served.client() as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"ready": True, "model_version": registry_versions.good[0]}
        model = client.get("/model").json()
    assert model["name"] == "reggaeton-classifier"
    assert model["version"] == registry_versions.good[0]
    assert model["threshold"] == 0.5
    assert model["metrics"] == {"pr_auc": 0.9}
    assert model["source"] == "registry"
    assert model["scorer"] == "rebuilt"  # scaler + logistic regression: rebuilt and verified at load
    assert model["run_id"]
    assert model["features"] == list(FEATURE_NAMES)


def test_metrics_count_requests_and_predictions(served: Server) -> None:
    with served.client() as client:
        client.post("/predict", json=SONG)
        client.post("/predict", json=INVALID_EXAMPLE_SONG)
        text = client.get("/metrics").text
    assert 'reggaeton_http_requests_total{route="/predict",status="200"}' in text
    assert 'reggaeton_http_requests_total{route="/predict",status="422"}' in text
    assert "reggaeton_http_request_duration_seconds_bucket" in text
    assert "reggaeton_model_version_info{model_version=" in text
    assert "reggaeton_predicted_positive_rate" in text
    assert 'reggaeton_model_reloads_total{outcome="swapped"} 1.0' in text
    assert "reggaeton_prediction_log_queue_rows" in text
    assert "reggaeton_prediction_log_queue_full_total 0.0" in text


def test_metrics_show_the_champion_degraded_while_monitoring_holds_it_so(
    served: Server, registry_versions: Registry
) -> None:
    """The monitor puts its state on the champion version; the API's next poll shows it (issue 26)."""
    from adapters import registry
    from embedded.manual import wait_until

    settings = registry_versions.settings
    client = registry.connect(settings)
    version = registry_versions.good[0]

    def degraded_gauge() -> str | None:
        text = httpx.get(served.url + "/metrics", timeout=5).text
        found = [line for line in text.splitlines() if line.startswith("reggaeton_champion_degraded")]
        return "\n".join(found) if found else None

    def showing(expected: str) -> str | None:
        text = degraded_gauge()
        return text if text and expected in text else None

    try:
        registry.set_monitoring_state(
            client, settings.mlflow.model_name, version, "degraded", "2026-12-06T12:07:00+00:00"
        )
        shown = wait_until(
            "the degraded champion on /metrics",
            lambda: showing(f'{{model_version="{version}"}} 1.0'),
            15,
            0.2,
        )
        assert "reggaeton_champion_degraded_since_timestamp_seconds 1.79655882e+09" in shown
        registry.set_monitoring_state(client, settings.mlflow.model_name, version, "ok", "")
        wait_until(
            "the recovered champion on /metrics",
            lambda: showing(f'{{model_version="{version}"}} 0.0'),
            15,
            0.2,
        )
    finally:
        registry.set_monitoring_state(client, settings.mlflow.model_name, version, "ok", "")


def test_an_idle_connection_outlives_uvicorns_default_keep_alive(served: Server) -> None:
    """The server keeps an idle connection past 5 s (uvicorn's default; ``serving.keep_alive_s``), so a
    balancer or client that reuses one within its own shorter idle timeout never meets a close."""
    import http.client

    host, port = served.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/health")
        assert connection.getresponse().read() and connection.sock is not None
        first = connection.sock
        time.sleep(6)
        connection.request("GET", "/health")  # on the same socket: http.client reconnects only after a close
        response = connection.getresponse()
        assert response.status == 200 and connection.sock is first, response.status
    finally:
        connection.close()


def test_openapi_has_the_challenge_examples(served: Server) -> None:
    with served.client() as client:
        spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["one song"]["value"] == SONG
    assert set(spec["components"]["schemas"]["Song"]["properties"]) == set(FEATURE_NAMES)
    assert spec["components"]["schemas"]["Song"]["properties"]["loudness"]["maximum"] == 0


def test_feedback_and_admin_need_each_their_own_token(served: Server) -> None:
    with served.client() as client:
        pid = client.post("/predict", json=SONG).json()["predictions"][0]["id"]
        label = {"prediction_id": pid, "label": 1}
        missing = client.post("/feedback", json=label)
        wrong = client.post("/feedback", json=label, headers={"Authorization": "Bearer nope-ñ".encode()})
        # One credential per purpose: the admin token sends no labels, the feedback token reloads nothing.
        admin_labels = client.post("/feedback", json=label, headers=served.admin_headers())
        reload_ = client.post("/admin/reload")
        feedback_reloads = client.post("/admin/reload", headers=served.feedback_headers())
    assert missing.status_code == wrong.status_code == reload_.status_code == 401
    assert admin_labels.status_code == feedback_reloads.status_code == 401


def test_feedback_records_once_and_repeats_idempotently(served: Server) -> None:
    with served.client(headers=served.feedback_headers()) as client:
        pid = client.post("/predict", json=SONG).json()["predictions"][0]["id"]
        first = client.post("/feedback", json={"prediction_id": pid, "label": 1})
        again = client.post("/feedback", json={"prediction_id": pid, "label": 1})
        other = client.post("/feedback", json={"prediction_id": pid, "label": 0})
        unknown = client.post("/feedback", json={"prediction_id": "no-such-id", "label": 1})
        bad = client.post("/feedback", json={"prediction_id": pid, "label": 2})
        as_float = client.post("/feedback", json={"prediction_id": pid, "label": 1.0})  # a JSON integer
        half = client.post("/feedback", json={"prediction_id": pid, "label": 0.5})
        text = client.post("/feedback", json={"prediction_id": pid, "label": "1"})
    assert first.status_code == 200 and first.json()["created"] is True
    assert again.status_code == 200 and again.json()["created"] is False
    assert as_float.status_code == 200 and as_float.json()["created"] is False
    assert half.status_code == 422 and "label" in _error_fields(half)
    assert text.status_code == 422 and "label" in _error_fields(text)
    assert other.status_code == 409
    assert unknown.status_code == 404
    assert bad.status_code == 422 and "label" in _error_fields(bad)


def test_admin_reload_reports_unchanged(served: Server, registry_versions: Registry) -> None:
    with served.client(headers=served.admin_headers()) as client:
        result = client.post("/admin/reload").json()
    assert result == {"outcome": "unchanged", "version": registry_versions.good[0], "detail": None}


def test_predictions_are_logged(served: Server) -> None:
    with served.client(headers=served.feedback_headers()) as client:
        ids = [p["id"] for p in client.post("/predict", json=list(EXAMPLE_SONGS)).json()["predictions"]]
        # Feedback waits for the log to be flushed, so afterwards the rows are visible.
        client.post("/feedback", json={"prediction_id": ids[0], "label": 0})
    engine = make_engine(served.settings.prediction_log_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(predictions).where(predictions.c.id.in_(ids))).mappings().all()
            total = connection.execute(select(func.count()).select_from(predictions)).scalar_one()
    finally:
        engine.dispose()
    assert {row["id"] for row in rows} == set(ids)
    by_id = {row["id"]: row for row in rows}
    assert by_id[ids[1]]["loudness"] == EXAMPLE_SONGS[1]["loudness"]
    assert all(math.isfinite(row["probability"]) for row in rows)
    assert {row[ROUTE] for row in rows} == {ROUTE_CHAMPION}
    # Ids are time-ordered: each tells its row's creation time, to the millisecond.
    for row in rows:
        created = row["created_at"].replace(tzinfo=UTC)
        assert issued_at(row["id"]) == created.replace(microsecond=created.microsecond // 1000 * 1000)
    assert total > len(ids)


def test_feedback_for_an_archived_prediction_is_gone_not_unknown(served: Server) -> None:
    # The manifest row a retention run leaves: predictions before the cutoff were archived and deleted.
    cutoff = datetime(2026, 1, 1, tzinfo=UTC)
    engine = make_engine(served.settings.prediction_log_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                archive_parts.insert().values(
                    part="predictions/date=2025-12-31/part-test.parquet",
                    source=predictions.name,
                    rows=1,
                    first_created_at=cutoff - timedelta(days=1),
                    last_created_at=cutoff - timedelta(days=1),
                    cutoff=cutoff,
                    written_at=cutoff,
                    deleted_at=cutoff,
                )
            )
    finally:
        engine.dispose()
    (archived,) = time_ordered_ids(1, int((cutoff - timedelta(hours=1)).timestamp() * 1000))
    (never_issued,) = time_ordered_ids(1, int(datetime.now(UTC).timestamp() * 1000))
    with served.client(headers=served.feedback_headers()) as client:
        live = client.post("/predict", json=SONG).json()["predictions"][0]["id"]
        gone = client.post("/feedback", json={"prediction_id": archived, "label": 1})
        unknown = client.post("/feedback", json={"prediction_id": never_issued, "label": 1})
        recorded = client.post("/feedback", json={"prediction_id": live, "label": 1})
    assert gone.status_code == 410, gone.text
    assert "archived" in gone.json()["detail"] and "2026-01-01" in gone.json()["detail"]
    assert unknown.status_code == 404
    assert recorded.status_code == 200


def test_api_key_guards_predict_when_configured(
    tmp_path: Path, registry_versions: Registry, served: Server
) -> None:
    settings = make_settings(
        tmp_path / "state", registry_versions.settings, api_key="client-key-1", replica_name="replica-b"
    )
    with run_server(settings) as keyed, keyed.client() as client:
        missing = client.post("/predict", json=SONG)
        wrong = client.post("/predict", json=SONG, headers={"X-API-Key": "client-key-2"})
        right = client.post("/predict", json=SONG, headers={"X-API-Key": "client-key-1"})
        spec = client.get("/openapi.json").json()
    assert missing.status_code == wrong.status_code == 401
    assert "X-API-Key" in missing.json()["detail"]
    assert right.status_code == 200 and right.json()["predictions"][0]["model_version"]
    # The configured replica name, on the route's answers (a key turns the fast path off) as on errors.
    assert {r.headers[REPLICA_HEADER] for r in (missing, wrong, right)} == {"replica-b"}
    assert spec["paths"]["/predict"]["post"]["security"] == [{"APIKeyHeader": []}]
    # Without a key configured the endpoint is open and its docs ask for none.
    with served.client() as client:
        assert client.post("/predict", json=SONG).status_code == 200
        assert "security" not in client.get("/openapi.json").json()["paths"]["/predict"]["post"]


def test_chunked_body_is_served_like_a_sized_one(served: Server) -> None:
    """Without Content-Length the request takes FastAPI's route instead of the fast path: same answer."""
    body = json.dumps([SONG, EXAMPLE_SONGS[1]]).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    with served.client() as client:
        sized = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
        chunked = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert sized.status_code == chunked.status_code == 200
    assert sized.headers["content-type"] == chunked.headers["content-type"] == "application/json"
    for a, b in zip(sized.json()["predictions"], chunked.json()["predictions"], strict=True):
        assert a.keys() == b.keys() and a["probability"] == b["probability"] and a["id"] != b["id"]


def test_every_response_names_the_replica_that_answered(served: Server) -> None:
    """The fast path, FastAPI's route (a chunked body, an error) and the other endpoints alike."""

    def chunks() -> Iterator[bytes]:
        yield json.dumps(SONG).encode()

    with served.client() as client:
        answers = {
            "fast path": client.post("/predict", json=SONG),
            "route": client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"}),
            "422": client.post("/predict", json=INVALID_EXAMPLE_SONG),
            "ready": client.get("/ready"),
            "metrics": client.get("/metrics"),
            "404": client.get("/no-such-path"),
        }
    assert {name: r.headers.get(REPLICA_HEADER) for name, r in answers.items()} == dict.fromkeys(
        answers, socket.gethostname()
    )
    assert answers["fast path"].status_code == answers["route"].status_code == 200
