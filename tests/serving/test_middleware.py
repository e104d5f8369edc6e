"""A middleware registered on the app wraps the fast path of POST /predict too: nothing skips it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from serving_support import Registry, make_settings, promote
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reggaeton.schema import EXAMPLE_SONGS
from serving.app import create_app
from serving.fast_path import ServingApp


class HeaderMiddleware:
    """What a request-id or CORS middleware does: touch every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-wrapped", b"yes")]}
            await send(message)

        await self.app(scope, receive, tagged)


@pytest.fixture(scope="module")
def app_and_url(
    tmp_path_factory: pytest.TempPathFactory, registry_versions: Registry
) -> Iterator[tuple[ServingApp, str]]:
    settings = make_settings(tmp_path_factory.mktemp("middleware") / "state", registry_versions.settings)
    promote(registry_versions.settings, registry_versions.good[0])
    app = create_app(settings)
    app.add_middleware(HeaderMiddleware)  # added after the app was built, as a later change would
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.serving.port, log_config=None, loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.serving.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("server not ready in 60 s")
    assert isinstance(app, ServingApp)
    yield app, url
    server.should_exit = True
    thread.join(timeout=30)


def _count(url: str, status: int) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    prefix = f'reggaeton_http_requests_total{{route="/predict",status="{status}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def test_a_registered_middleware_sees_fast_and_routed_requests_once(
    app_and_url: tuple[ServingApp, str],
) -> None:
    app, url = app_and_url
    assert app.fast_path is not None
    answered = app.fast_path.answered

    fast = httpx.post(f"{url}/predict", json=EXAMPLE_SONGS[0], timeout=10)
    assert fast.status_code == 200 and fast.headers["x-wrapped"] == "yes"
    assert app.fast_path.answered == answered + 1  # answered by the fast path, inside the middleware

    bad = httpx.post(f"{url}/predict", json={**EXAMPLE_SONGS[0], "loudness": 125.5}, timeout=10)
    assert bad.status_code == 422 and bad.headers["x-wrapped"] == "yes"
    assert bad.json()["detail"][0]["msg"].startswith("loudness")
    assert app.fast_path.answered == answered + 1  # handed to the route, which words the error

    assert httpx.get(f"{url}/health", timeout=5).headers["x-wrapped"] == "yes"
    # One metrics recorder: the fallback to the route is not counted twice.
    assert _count(url, 200) == 1 and _count(url, 422) == 1
