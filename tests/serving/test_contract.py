"""The published contract and the behaviour agree: schemathesis, every check, against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serving_support import ADMIN_TOKEN, FEEDBACK_TOKEN, Server

MAX_EXAMPLES = 25  # per operation and phase: bounded, and reproducible with the fixed seed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("token", "paths"),
    # Each credential where it is the right one: /feedback takes the feedback token, the rest the admin's.
    [(FEEDBACK_TOKEN, ["--include-path", "/feedback"]), (ADMIN_TOKEN, ["--exclude-path", "/feedback"])],
    ids=["feedback", "others"],
)
def test_schemathesis_finds_no_disagreement(
    served: Server, tmp_path: Path, token: str, paths: list[str]
) -> None:
    report = tmp_path / "schemathesis.txt"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{served.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "12",
        "--header",
        f"Authorization: Bearer {token}",
        *paths,
        "--request-timeout",
        "10",
        "--no-color",
    ]
    with report.open("wb") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False)
    assert result.returncode == 0, report.read_text(errors="replace")[-20_000:]
