"""Shared fixtures (isolated settings per test, the original challenge data, a Prefect server) and how
the suite is ordered, tiered and spread over pytest-xdist workers (see ``scheduling.py``)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cpu_accounting import CpuMeter
from scheduling import (
    GROUPS_ENV,
    DurationRecorder,
    longest_first,
    make_scheduler,
    stored_durations,
    write_groups,
)

from reggaeton.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
# The original challenge data lives beside the checkout (../shared), never in the repo.
ORIGINAL_DATA = Path(
    os.environ.get("REGGAETON_TEST_DATA", REPO_ROOT.parent / "shared" / "data" / "reggaeton-2018")
)

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Parallelism comes from the workers (and the stacks' own processes): one native thread each, set before
# any library starts its thread pools (workers and servers inherit it). Two busy workers with a thread
# per core each ran a CPU-bound test 2-3x slower than one thread each on two cores.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

# Tests that use these fixtures start servers, so they are not in the fast tier (`make test-fast`).
SERVER_FIXTURES = {"prefect_api_url": "prefect", "postgres_server_url": "slow"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-durations",
        action="store_true",
        help="write each unit's seconds of this run to tests/durations.json (the order of the next runs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "prefect: uses the session's Prefect server (marked automatically)")
    config.addinivalue_line("markers", "xdist_group(name): run on the one worker that runs this group")
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers: it sees every report
        # Where the workers (started after this) write the groups they collect: scheduling.GROUPS_ENV.
        folder = Path(tempfile.mkdtemp(prefix="reggaeton-test-groups-"))
        os.environ[GROUPS_ENV] = str(folder)
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
        recorder = DurationRecorder(config.getoption("store_durations"), folder)
        config.pluginmanager.register(recorder, "unit-durations")
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):  # runs tests
        config.pluginmanager.register(CpuMeter(f"{os.getpid()}"), "cpu-meter")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in SERVER_FIXTURES.items():
            if fixture in item.fixturenames:  # type: ignore[attr-defined]
                item.add_marker(marker)
    items[:] = longest_first(items, stored_durations())
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    write_groups(items, Path(os.environ[GROUPS_ENV]) / f"groups-{worker}.json")


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """Under ``--dist loadgroup`` (``make test``): longest units first, one at a time per worker."""
    return make_scheduler(config, log) if config.getvalue("dist") == "loadgroup" else None


@pytest.fixture(autouse=True)
def _prefect_workers_end_with_the_test() -> Iterator[None]:
    """Prefect's process-wide event and log workers end with each test that started them.

    Each keeps the API of its first use (a local server's events client takes the URL when it starts):
    on a pytest-xdist worker, the tests that follow, on the session's server or on a stack of their own,
    would have their events (task run states among them) and logs sent to a server long gone.
    """
    yield
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)


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


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A real Postgres server for the session (tests/postgres_support.py); tests make their own databases."""
    from postgres_support import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """A fresh, empty Postgres database of this test."""
    from postgres_support import fresh_database

    return fresh_database(postgres_server_url)
