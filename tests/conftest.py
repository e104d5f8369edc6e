"""Shared fixtures: isolated settings per test and the original challenge data (CI only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
# The original challenge data lives beside the checkout (../shared), never in the repo.
ORIGINAL_DATA = Path(
    os.environ.get("REGGAETON_TEST_DATA", REPO_ROOT.parent / "shared" / "data" / "reggaeton-2018")
)

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings with every state file under this test's tmp folder."""
    return Settings(state_dir=tmp_path / "state")


@pytest.fixture(scope="session")
def original_data() -> Path:
    """Folder with the original CSVs; required in CI, skipped elsewhere with a reason."""
    if (ORIGINAL_DATA / "data_reggaeton.csv").is_file():
        return ORIGINAL_DATA
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must have the original data at {ORIGINAL_DATA}")
    pytest.skip(f"original challenge data not found at {ORIGINAL_DATA} (set REGGAETON_TEST_DATA)")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The local alert receiver in a thread on a free port: (its port, its alerts file)."""
    import threading

    from embedded.receiver import make_server

    path = tmp_path / "alerts.jsonl"
    server = make_server(path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, path
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A real Prefect server (subprocess, temporary database) for the whole test session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())
