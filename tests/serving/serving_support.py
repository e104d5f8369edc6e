"""Helpers for the serving tests: register versions in a real SQLite MLflow registry, run real servers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np

from adapters import decisions, keys, registry
from reggaeton import decision_record, names
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.model import LOGISTIC_REGRESSION, build_pipeline
from reggaeton.schema import TARGET
from reggaeton.settings import Settings

ADMIN_TOKEN = "test-admin-token"
FEEDBACK_TOKEN = "test-feedback-token"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(state_dir: Path, registry_settings: Settings | None = None, **serving: Any) -> Settings:
    """Settings for one server: its own state (log, cache), a fast poll, a known admin token.

    Args:
        registry_settings: Share this MLflow store and registry (the session's registered versions).
    """
    mlflow_section: dict[str, Any] = {}
    signing: dict[str, Any] = {}
    if registry_settings is not None:
        mlflow_section = {
            "tracking_uri": registry_settings.tracking_uri,
            "artifact_root": registry_settings.artifact_root,
        }
        # The server trusts the public key of the registry's decider (tests/serving: `promote` below).
        signing = {"public_keys": keys.ensure_local_keys(registry_settings).public_text()}
    return Settings(
        state_dir=state_dir,
        mlflow=mlflow_section,
        signing=signing,
        serving={
            "poll_interval_s": 0.5,
            "admin_token": ADMIN_TOKEN,
            "feedback_token": FEEDBACK_TOKEN,
            "port": free_port(),
            **serving,
        },
    )


def register_version(
    settings: Settings, *, c: float = 1.0, threshold: float | None = 0.5, poison: bool = False
) -> str:
    """Fit a small logistic regression on synthetic data, log and register it; return its version.

    Args:
        c: Regularisation, so versions differ.
        threshold: The threshold tag; None registers a version without one (refused by the server).
        poison: Replace the coefficients with NaN, so the version loads but fails the smoke check.
    """
    client = registry.connect(settings)
    data = split(synthetic_dataset(400, seed=3), 0.3, seed=3)
    pipeline = build_pipeline(LOGISTIC_REGRESSION, {"C": c}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    if poison:
        pipeline[-1].coef_ = np.full_like(pipeline[-1].coef_, np.nan)
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(pipeline, data.holdout, threshold=threshold or 0.5)
        registry.log_model_metrics(info, {"pr_auc": 0.9}, {"family": LOGISTIC_REGRESSION})
    tags: dict[str, Any] = {}
    if threshold is not None:
        tags[names.Tag.THRESHOLD] = threshold
    version = registry.register(client, info, names.MODEL_NAME, tags)
    return str(version.version)


def sign(settings: Settings, version: str, key: decision_record.SigningKey | None = None) -> None:
    """Write an operator's signed decision about ``version`` (with the next sequence); no alias moves.

    Args:
        key: The signing key (default: the registry's own, which the test servers trust).
    """
    decisions.sign_decision(
        registry.connect(settings),
        key or keys.ensure_local_keys(settings),
        model=names.MODEL_NAME,
        version=version,
        action=decision_record.MANUAL,
        outcome=decision_record.PROMOTED,
        previous_champion=None,
        evaluation=None,
        evidence=decision_record.evidence_of({"test": version}, "serving tests"),
        policy={},
        decided_by="serving tests",
        decided_at=decisions.now(),
    )


def promote(settings: Settings, version: str) -> None:
    """An operator's decision: sign ``version`` with the next sequence, then point the alias at it."""
    sign(settings, version)
    registry.connect(settings).set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version)


def decided(
    model_name: str, version: str, key: decision_record.SigningKey, sequence: int | None = None
) -> dict[str, Any]:
    """The ``decision`` and ``signature`` of a ServedModel authorized by an operator's signed decision."""
    record = decision_record.new_record(
        model=model_name,
        version=version,
        action=decision_record.MANUAL,
        outcome=decision_record.PROMOTED,
        previous_champion=None,
        sequence=sequence or int(version),
        evaluation=None,
        evidence=decision_record.evidence_of({}, "serving tests"),
        policy={},
        decided_by="serving tests",
        decided_at="2026-12-06T12:00:00+00:00",
    )
    return {"decision": record, "signature": key.sign(record)}


def move_by_hand(settings: Settings, version: str) -> None:
    """Point the champion alias at ``version`` without a decision (anyone with registry access can)."""
    registry.connect(settings).set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version)


@dataclass
class Server:
    """A ``python -m serving`` process on a loopback port."""

    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serving.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def feedback_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (graceful: the log is flushed), then wait; SIGKILL only if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def server_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes ``Settings()`` in the child equal ``settings`` (for what tests vary)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGGAETON_", "PREFECT_API_URL"))}
    serving = settings.serving
    env.update(
        {
            "REGGAETON_STATE_DIR": str(settings.state_dir),
            "REGGAETON_SERVING__PORT": str(serving.port),
            "REGGAETON_SERVING__POLL_INTERVAL_S": str(serving.poll_interval_s),
            "REGGAETON_SERVING__ADMIN_TOKEN": serving.admin_token.get_secret_value(),
            "REGGAETON_SERVING__FEEDBACK_TOKEN": serving.feedback_token.get_secret_value(),
            "REGGAETON_SERVING__MAX_BATCH": str(serving.max_batch),
            "REGGAETON_SERVING__MAX_BODY_BYTES": str(serving.max_body_bytes),
            "REGGAETON_SERVING__LOG_QUEUE_SIZE": str(serving.log_queue_size),
            "REGGAETON_SERVING__LOG_WRITE_STALL_S": str(serving.log_write_stall_s),
            "REGGAETON_LOG_LEVEL": "INFO",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
            "NML_DISABLE_USAGE_LOGGING": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    if settings.mlflow.tracking_uri:
        env["REGGAETON_MLFLOW__TRACKING_URI"] = settings.mlflow.tracking_uri
    if settings.mlflow.artifact_root:
        env["REGGAETON_MLFLOW__ARTIFACT_ROOT"] = settings.mlflow.artifact_root
    if settings.signing.public_keys is not None:
        env["REGGAETON_SIGNING__PUBLIC_KEYS"] = settings.signing.public_keys
    if serving.api_key is not None:
        env["REGGAETON_SERVING__API_KEY"] = serving.api_key.get_secret_value()
    if serving.replica_name is not None:
        env["REGGAETON_SERVING__REPLICA_NAME"] = serving.replica_name
    env.update(extra or {})
    return env


@contextlib.contextmanager
def run_server(
    settings: Settings, *, extra_env: dict[str, str] | None = None, ready: bool = True, timeout_s: float = 120
) -> Iterator[Server]:
    """Start a server, wait until /health (and /ready) answer, stop it (by PID) afterwards."""
    log_path = settings.state_path.parent / f"server-{settings.serving.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=REPO_ROOT,
            env=server_env(settings, extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(settings, process, log_path, extra_env or {})
    try:
        deadline = time.monotonic() + timeout_s
        path = "/ready" if ready else "/health"
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}:\n{server.output()}")
            try:
                if httpx.get(server.url + path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not {path} within {timeout_s} s:\n{server.output()}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Registry:
    """The session's MLflow registry and the versions registered in it."""

    settings: Settings
    good: tuple[str, ...]  # three loadable versions with a threshold tag
    poisoned: str  # loads, but predicts NaN (fails the smoke check)
    no_threshold: str  # loads and predicts, but carries no threshold tag
