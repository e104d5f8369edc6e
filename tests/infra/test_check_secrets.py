"""The stack's first job refuses example secrets, naming the variable (run as the container runs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reggaeton.settings import EXAMPLE_SECRETS


def run_check(**secrets: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "ADMIN_TOKEN")} | secrets
    return subprocess.run(
        [sys.executable, "-m", "infra.check_secrets"], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("example", sorted(EXAMPLE_SECRETS))
def test_an_example_secret_is_refused_by_name(example: str) -> None:
    refused = run_check(POSTGRES_PASSWORD="a-real-one-4f1", ADMIN_TOKEN=example)
    assert refused.returncode == 1
    assert "ADMIN_TOKEN is still the example value" in refused.stderr
    assert "POSTGRES_PASSWORD" not in refused.stderr


def test_every_bad_secret_is_named_at_once() -> None:
    refused = run_check(POSTGRES_PASSWORD="change-me")
    assert refused.returncode == 1
    assert "POSTGRES_PASSWORD is still the example value" in refused.stderr
    assert "ADMIN_TOKEN is not set" in refused.stderr


def test_real_secrets_pass() -> None:
    passed = run_check(POSTGRES_PASSWORD="a-real-one-4f1", ADMIN_TOKEN="another-9c2")
    assert passed.returncode == 0, passed.stderr
