"""The prediction log loses nothing: after many requests it holds exactly the successful predictions."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from serving_support import Registry, make_settings, promote, run_server
from sqlalchemy import func, select

from adapters.prediction_log import make_engine, predictions
from reggaeton.schema import EXAMPLE_SONGS, INVALID_EXAMPLE_SONG

REQUESTS = 5000
CONCURRENCY = 32


async def _send_all(url: str) -> tuple[list[str], int]:
    """Send REQUESTS requests (single songs, some pairs, some invalid); return logged ids and refusals."""
    limit = asyncio.Semaphore(CONCURRENCY)
    ids: list[str] = []
    refused = 0

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal refused
        body: object = (
            list(EXAMPLE_SONGS) if i % 7 == 0 else INVALID_EXAMPLE_SONG if i % 11 == 0 else EXAMPLE_SONGS[0]
        )
        async with limit:
            response = await client.post("/predict", json=body)
        if response.status_code == 200:
            ids.extend(p["id"] for p in response.json()["predictions"])
        else:
            assert response.status_code == 422, response.text
            refused += 1

    # A pooled connection is reused only within 1 s of its last answer, and the server keeps an idle one
    # 75 s (``serving.keep_alive_s``). With uvicorn's default 5 s, a client or server loop stalled for
    # seconds under CI load once sent on a connection the server was closing (httpx.ReadError, twice).
    limits = httpx.Limits(max_connections=CONCURRENCY, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(i, client) for i in range(REQUESTS)))
    return ids, refused


@pytest.mark.slow
def test_log_holds_exactly_the_successful_predictions(tmp_path: Path, registry_versions: Registry) -> None:
    promote(registry_versions.settings, registry_versions.good[0])
    # A tiny queue, so requests do meet a full queue and must wait instead of dropping rows.
    settings = make_settings(tmp_path / "state", registry_versions.settings, log_queue_size=8)
    with run_server(settings) as server:
        ids, refused = asyncio.run(_send_all(server.url))
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        server.stop()  # SIGTERM is graceful: the queue is drained into the log
    assert "Application shutdown complete" in server.output()
    assert refused == len([i for i in range(REQUESTS) if i % 7 != 0 and i % 11 == 0])
    engine = make_engine(settings.prediction_log_url)
    try:
        with engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(predictions)).scalar_one()
            logged = set(connection.execute(select(predictions.c.id)).scalars())
    finally:
        engine.dispose()
    assert count == len(ids)
    assert logged == set(ids)
    written = re.search(r"^reggaeton_prediction_log_rows_written_total (\S+)$", metrics, re.MULTILINE)
    assert written is not None
    full = re.search(r"^reggaeton_prediction_log_queue_full_total (\S+)$", metrics, re.MULTILINE)
    assert full is not None and float(full.group(1)) > 0, (
        "the tiny queue was never full: backpressure untested"
    )
