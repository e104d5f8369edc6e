"""A real Postgres for tests: a throw-away server of this test session, one fresh database per test.

Where it comes from, first found wins:
- ``REGGAETON_TEST_POSTGRES_URL``: a server someone runs (a superuser URL; each test creates its database);
- the machine's Postgres binaries (Debian's ``postgresql`` package: ``/usr/lib/postgresql/*/bin``): a
  cluster in the session's tmp folder on a free loopback port, run as the ``postgres`` user when root;
- the ``postgres:15`` image (``scripts/docker-offline.sh postgres`` builds a stand-in): a container of
  this session, published on 127.0.0.1 only, removed at the end.
Without any of them the tests are skipped with the reason (under ``CI=true``: a failure).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ENV_URL = "REGGAETON_TEST_POSTGRES_URL"
IMAGE = "postgres:15"
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    engine = create_engine(url)
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _local_cluster(binaries: Path) -> Iterator[str]:
    """initdb + pg_ctl in a new folder under /tmp, removed after.

    As the postgres user when root (Postgres refuses to run as root), so not under pytest's tmp folder,
    which only root can enter.
    """
    folder = Path(tempfile.mkdtemp(prefix="reggaeton-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(
        [*as_user, str(binaries / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_user, str(binaries / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*pg_ctl, "-l", str(folder / "server.log"), "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT_S,
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait_ready(url)
        yield url
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _container() -> Iterator[str]:
    name = f"reggaeton-test-pg-{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    port = _free_port()
    subprocess.run(
        [
            *("docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5432"),
            *("-e", "POSTGRES_USER=postgres", "-e", f"POSTGRES_PASSWORD={password}", IMAGE),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        url = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        _wait_ready(url)
        yield url
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


def _docker_image() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=60)
    return probe.returncode == 0


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A superuser URL of a Postgres server for the block (see the module docstring)."""
    if os.environ.get(ENV_URL):
        yield os.environ[ENV_URL]
        return
    binaries = _binaries()
    if binaries is not None:
        with _local_cluster(binaries) as url:
            yield url
        return
    if _docker_image():
        with _container() as url:
            yield url
        return
    reason = f"no Postgres: set {ENV_URL}, install Debian's postgresql, or build the {IMAGE} image"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def fresh_database(server_url: str, prefix: str = "t") -> str:
    """A new, empty database on the server; its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)
