"""Waiting for the stand-in base images that CI builds beside the tests (``.ci/run``).

On a fresh machine ``scripts/docker-offline.sh images`` takes minutes (two Debian root filesystems):
CI runs it in the background while lint, types and the tests that need no image run, and names a file
in ``REGGAETON_TEST_IMAGES_READY`` where the script's exit status appears when it ends. A test that
needs an image waits for it here; elsewhere (the variable unset) the images are there or not, as is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

READY_ENV = "REGGAETON_TEST_IMAGES_READY"
WAIT_S = 1800.0


def wait_for_images(timeout_s: float = WAIT_S) -> None:
    """Until the background build has ended (a failure of it fails the caller, naming its status)."""
    marker = os.environ.get(READY_ENV)
    if not marker:
        return
    path, deadline = Path(marker), time.monotonic() + timeout_s
    while not path.is_file() or not path.read_text().strip():
        if time.monotonic() > deadline:
            pytest.fail(f"the stand-in images were not built within {timeout_s:.0f} s ({READY_ENV}={path})")
        time.sleep(2)
    status = path.read_text().strip()
    if status != "0":
        pytest.fail(f"building the stand-in images failed (exit {status}): see .ci/run's docker-offline log")
