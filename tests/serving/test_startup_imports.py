"""The API server's start-up imports only what serving needs: its time to /ready counts on every replica.

Prefect's client (~1.5 s to import) and MLflow are loaded when first used (an event sent, the registry
polled), after the server is ready, never by ``python -m serving`` before it can answer. scikit-learn,
SciPy and pandas (~1.9 s together) are loaded only to load a pipeline (a new version from the registry,
or a cache whose scorer cannot be used): a replica starting from the model cache never imports them
(tests/serving/test_model_cache.py).
"""

from __future__ import annotations

import subprocess
import sys

LATE = ("prefect", "mlflow", "nannyml", "optuna", "sklearn", "imblearn", "scipy", "pandas")


def test_the_server_module_does_not_import_orchestration_or_tracking_clients() -> None:
    probe = (
        "import sys, serving.__main__, serving.app; "
        f"print(','.join(name for name in {LATE!r} if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "", f"imported at start-up: {result.stdout.strip()}"
