"""The containers' healthcheck command: a 2xx over HTTP, or a renewed liveness file; never hangs.

The real stacks' services (uvicorn, haproxy, MLflow, Prefect) are checked by it in
tests/infra/test_compose_stack.py, where every container must turn healthy; here its answers to each
kind of server, on loopback.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from imports_support import Probe, probe_imports

from infra import healthcheck
from reggaeton import heartbeat


class _Handler(BaseHTTPRequestHandler):
    STATUS: ClassVar[dict[str, int]] = {"/health": 200, "/empty": 204, "/down": 503, "/moved": 302}

    def do_GET(self) -> None:
        status = self.STATUS.get(self.path.split("?")[0], 404)
        body = b"ok" if status == 200 else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_2xx_is_healthy_anything_else_is_not(server: str) -> None:
    assert healthcheck.healthy(f"{server}/health")
    assert healthcheck.healthy(f"{server}/empty")
    assert healthcheck.healthy(f"{server}/health?deep=1")
    assert not healthcheck.healthy(f"{server}/down")
    assert not healthcheck.healthy(f"{server}/moved")
    assert not healthcheck.healthy(f"{server}/missing")
    assert not healthcheck.healthy("https://127.0.0.1:1/health")  # plain HTTP only
    assert not healthcheck.healthy("not a url")


def test_nothing_listening_or_a_server_that_never_answers_is_unhealthy_within_the_timeout() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not healthcheck.healthy(f"http://127.0.0.1:{port}/health")  # refused
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        began = time.monotonic()
        assert not healthcheck.healthy(f"http://127.0.0.1:{silent.getsockname()[1]}/health", timeout_s=0.5)
        assert time.monotonic() - began < 3


def test_the_alive_form_reads_a_deadline(tmp_path: Path) -> None:
    path = tmp_path / "service.alive"
    assert healthcheck.main(["--alive", str(path)]) == 1  # never renewed
    heartbeat.renew(path, 60)
    assert healthcheck.main(["--alive", str(path)]) == 0
    heartbeat.renew(path, 60, now=time.time() - 61)
    assert healthcheck.main(["--alive", str(path)]) == 1
    path.write_text("garbage\n")
    assert healthcheck.main(["--alive", str(path)]) == 1
    assert healthcheck.main(["--alive"]) == 2  # a usage error, not a health answer


def test_the_command_as_a_container_runs_it(server: str, tmp_path: Path) -> None:
    """A fresh interpreter each time: exit status 0 or 1, and nothing heavy imported."""

    def run(*args: str) -> Probe:
        code = "import runpy; sys.argv = ['healthcheck', *sys.argv[1:]]\n"
        code += "runpy.run_module('infra.healthcheck', run_name='__main__')"
        heavy = ("pydantic", "prefect", "mlflow", "pandas", "urllib.request")
        return probe_imports(code, heavy, *args, timeout_s=30)

    up, down = run(f"{server}/health"), run(f"{server}/down")
    assert (up.returncode, down.returncode) == (0, 1), (up.stderr, down.stderr)
    heartbeat.renew(tmp_path / "w.alive", 60)
    alive = run("--alive", str(tmp_path / "w.alive"))
    assert alive.returncode == 0, alive.stderr
    assert up.imported == down.imported == alive.imported == []
