"""The stack's first job refuses missing, example and unusable secrets, naming each (as in its container)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stack_secrets import secret_values

from infra import check_secrets
from infra.services import VARIABLES
from reggaeton import decision_record
from reggaeton.settings import EXAMPLE_SECRETS

CHECKED = {name for name, v in VARIABLES.items() if v.secret or name == "DECISION_VERIFY_KEY"}


def run_check(**values: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in CHECKED} | values
    return subprocess.run(
        [sys.executable, "-m", "infra.check_secrets"], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("example", sorted(EXAMPLE_SECRETS))
def test_an_example_secret_is_refused_by_name(example: str) -> None:
    refused = run_check(**{**secret_values("real"), "ADMIN_TOKEN": example, "API_KEY": example})
    assert refused.returncode == 1
    assert "ADMIN_TOKEN is still the example value" in refused.stderr
    assert "API_KEY is still the example value" in refused.stderr  # optional, but never an example


def test_every_bad_secret_is_named_at_once() -> None:
    values = secret_values("real")
    del values["ADMIN_TOKEN"]
    refused = run_check(**{**values, "MLFLOW_SERVING_PASSWORD": "short", "PREFECT_AUTH_STRING": "change-me"})
    assert refused.returncode == 1
    assert "ADMIN_TOKEN is not set" in refused.stderr
    assert "MLFLOW_SERVING_PASSWORD has 5 characters; MLflow needs at least 12" in refused.stderr
    assert "PREFECT_AUTH_STRING is still the example value" in refused.stderr
    # The superuser password is not this job's: no application container holds it.
    assert "POSTGRES_PASSWORD" not in refused.stderr


def test_one_credential_per_purpose_and_a_matching_key_pair() -> None:
    values = secret_values("real")
    same = run_check(**{**values, "FEEDBACK_TOKEN": values["ADMIN_TOKEN"]})
    assert same.returncode == 1 and "FEEDBACK_TOKEN equals ADMIN_TOKEN" in same.stderr
    other = decision_record.generate()
    mismatched = run_check(**{**values, "DECISION_VERIFY_KEY": other.public_text()})
    assert mismatched.returncode == 1
    assert "DECISION_VERIFY_KEY does not hold the public half of DECISION_SIGNING_KEY" in mismatched.stderr
    swapped = run_check(**{**values, "DECISION_SIGNING_KEY": values["DECISION_VERIFY_KEY"]})
    assert swapped.returncode == 1 and "this is a public key" in swapped.stderr


def test_real_secrets_pass() -> None:
    passed = run_check(**secret_values("real"))
    assert passed.returncode == 0, passed.stderr


def test_a_new_env_fills_every_example_secret_and_keeps_what_is_set(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("ADMIN_TOKEN=mine-already-set-1\nMLFLOW_PORT=15000\n")
    written = subprocess.run(
        [sys.executable, "-m", "infra.check_secrets", "--new-env", str(env)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    values = check_secrets._read_env(env)
    assert set(values) == set(VARIABLES)
    assert values["ADMIN_TOKEN"] == "mine-already-set-1" and values["MLFLOW_PORT"] == "15000"
    assert check_secrets.refused(values) == []  # every required secret is fresh, the key pair matches
    assert len({values[name] for name in CHECKED if values.get(name)}) == len(
        [n for n in CHECKED if values.get(n)]
    )


@pytest.mark.parametrize("example", ["", *sorted(EXAMPLE_SECRETS)])
def test_the_database_refuses_an_example_superuser_password(tmp_path: Path, example: str) -> None:
    # infra/postgres/start.sh, with a stand-in for the image's entrypoint that says what it was given.
    stub = tmp_path / "docker-entrypoint.sh"
    stub.write_text('#!/bin/sh\necho "entrypoint: $*"\n')
    stub.chmod(0o755)
    script = Path(check_secrets.__file__).parent / "postgres" / "start.sh"

    def start(password: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "POSTGRES_PASSWORD": password}
        return subprocess.run(
            ["sh", str(script), "postgres"], env=env, capture_output=True, text=True, timeout=30
        )

    refused = start(example)
    assert (
        refused.returncode == 1
        and "POSTGRES_PASSWORD is not set or is still an example value" in refused.stderr
    )
    started = start("a-real-one-4f1")
    assert started.returncode == 0 and started.stdout.strip() == "entrypoint: postgres"
