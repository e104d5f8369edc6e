"""The API server's start-up imports only what serving needs: its time to /ready counts on every replica.

Prefect's client (~1.5 s to import) and MLflow are loaded when first used (an event sent, the registry
polled), after the server is ready, never by ``python -m serving`` before it can answer. scikit-learn,
SciPy and pandas (~1.9 s together) are loaded only to load a pipeline (a new version from the registry,
or a cache whose scorer cannot be used): a replica starting from the model cache never imports them
(tests/serving/test_model_cache.py).
"""

from __future__ import annotations

from imports_support import probe_imports

LATE = ("prefect", "mlflow", "nannyml", "optuna", "sklearn", "imblearn", "scipy", "pandas")


def test_the_server_module_does_not_import_orchestration_or_tracking_clients() -> None:
    probe = probe_imports("import serving.__main__, serving.app", LATE, timeout_s=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.imported == [], f"imported at start-up: {probe.imported}"
