"""The container stacks' MLflow accounts (infra/accounts.py) on a real MLflow server with its basic-auth app.

The grants are what keeps a service to its part: each account must be able to do what its service does
and be refused (403) the rest. The compose stack checks some of this through its containers; here every
account is checked in seconds, on the same grants, against MLflow's own permission checks.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from adapters.registry import log_version_files
from flows.promote import GATE_ARTIFACTS
from infra.accounts import ensure_accounts
from reggaeton import names
from reggaeton.settings import Settings

ADMIN_PASSWORD = "admin-password-for-this-test"
PASSWORDS = {account: f"{account}-password-for-this-test" for account in names.MLFLOW_ACCOUNTS}
MODEL = "reggaeton-classifier"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server --app-name basic-auth`` on SQLite files, denying by default like the stacks'."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    # The stacks' own configuration, its user store a SQLite file here instead of their Postgres database.
    stacks = (REPO_ROOT / "infra" / "mlflow" / "basic_auth.ini").read_text()
    assert re.search(r"^database_uri = .*$", stacks, re.MULTILINE), stacks
    config = folder / "basic_auth.ini"
    config.write_text(
        re.sub(
            r"^database_uri = .*$",
            f"database_uri = sqlite:///{folder / 'auth.db'}",
            stacks,
            flags=re.MULTILINE,
        )
    )
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": names.MLFLOW_ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-key-for-this-test",
        **names.MLFLOW_SERVER_ENV,
    }
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--artifacts-destination", (folder / "artifacts").as_uri(), "--serve-artifacts"]
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (folder / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _as(monkeypatch: pytest.MonkeyPatch, account: str, url: str) -> MlflowClient:
    """A client acting as ``account`` (MLflow's client reads these variables at every request)."""
    password = ADMIN_PASSWORD if account == names.MLFLOW_ADMIN else PASSWORDS[account]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", account)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return MlflowClient(tracking_uri=url, registry_uri=url)


def _refused(attempt: Callable[[], object]) -> None:
    with pytest.raises(MlflowException, match="403"):
        attempt()


@pytest.mark.slow
def test_each_account_does_its_services_part_and_is_refused_the_rest(
    auth_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        state_dir=tmp_path / "state", mlflow={"tracking_uri": auth_server, "model_name": MODEL}
    )
    admin = _as(monkeypatch, names.MLFLOW_ADMIN, auth_server)
    assert set(ensure_accounts(settings, PASSWORDS).values()) == {"created"}
    # Twice: the bootstrap runs at every `up` (a grant already there is kept, the password set again).
    assert set(ensure_accounts(settings, PASSWORDS).values()) == {"updated"}
    monitoring_experiment = admin.get_experiment_by_name(settings.mlflow.monitoring_experiment).experiment_id

    training = _as(monkeypatch, names.TRAINING_ACCOUNT, auth_server)
    run = training.create_run(
        training.get_experiment_by_name(settings.mlflow.training_experiment).experiment_id
    )
    version = training.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    _refused(lambda: training.create_run(monitoring_experiment))
    admin = _as(monkeypatch, names.MLFLOW_ADMIN, auth_server)
    admin.set_registered_model_alias(MODEL, names.CHAMPION, version.version)
    status = names.Tag.MONITORING_STATUS

    monitoring = _as(monkeypatch, names.MONITORING_ACCOUNT, auth_server)
    monitoring.create_run(monitoring_experiment)  # its own runs
    monitoring.set_model_version_tag(MODEL, version.version, status, "degraded")  # what the monitor does
    assert monitoring.get_model_version(MODEL, version.version).tags[status] == "degraded"
    _refused(lambda: monitoring.set_registered_model_alias(MODEL, names.CHAMPION, version.version))
    _refused(lambda: monitoring.set_registered_model_alias(MODEL, "other", version.version))
    _refused(lambda: monitoring.create_model_version(MODEL, version.source, run_id=run.info.run_id))
    _refused(lambda: monitoring.delete_model_version_tag(MODEL, version.version, status))
    _refused(lambda: monitoring.set_registered_model_tag(MODEL, "owner", "monitoring"))
    _refused(lambda: monitoring.delete_model_version(MODEL, version.version))

    serving = _as(monkeypatch, names.SERVING_ACCOUNT, auth_server)
    assert serving.get_model_version(MODEL, version.version).tags[status] == "degraded"  # the API reads it
    _refused(lambda: serving.set_model_version_tag(MODEL, version.version, status, "ok"))

    promotion = _as(monkeypatch, names.PROMOTION_ACCOUNT, auth_server)
    promotion.set_model_version_tag(MODEL, version.version, status, "ok")
    promotion.set_registered_model_alias(MODEL, names.CHALLENGER, version.version)
    # The gate's files go onto the challenger's training run (registry.log_version_files, as the gate does).
    log_version_files(promotion, MODEL, version.version, GATE_ARTIFACTS, {"report.md": b"# the decision"})
    listed = [Path(f.path).name for f in promotion.list_artifacts(run.info.run_id, GATE_ARTIFACTS)]
    assert listed == ["report.md"], listed
    _refused(lambda: promotion.create_run(run.info.experiment_id))
    _refused(lambda: promotion.delete_run(run.info.run_id))
    _refused(lambda: promotion.set_experiment_tag(run.info.experiment_id, "owner", "promotion"))
