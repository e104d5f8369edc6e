"""The Prefect test server starts and answers (the fixture every flow test relies on)."""

import httpx


def test_prefect_server_is_up(prefect_api_url: str) -> None:
    response = httpx.get(f"{prefect_api_url}/health", timeout=10)
    assert response.status_code == 200
