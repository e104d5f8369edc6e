"""What a process pays at start: each flow run, command and container healthcheck is a fresh interpreter.

The suite runs a few hundred of them (and a stack, one per deployment run), so imports only some of them
use are made where they are used: imbalanced-learn (~0.7 s of CPU; it imports scikit-learn's test
utilities) when a SMOTE pipeline is built or loaded, matplotlib (~0.4 s) when a figure is drawn, SciPy's
stats (~1 s) by the flows that compute intervals. The API server's own budget is in
tests/serving/test_startup_imports.py.
"""

from __future__ import annotations

from imports_support import probe_imports

FLOWS = ("flows.train", "flows.promote", "flows.live_gate", "flows.monitor", "flows.retention")
FLOWS += ("flows.score_catalogue", "flows.tune", "cli.main")
# Flows whose modules need no model fitting or statistics at import (NannyML is imported by the run).
LIGHT = ("flows.monitor", "flows.retention", "flows.score_catalogue", "cli.main")


def _imported(modules: tuple[str, ...], watched: tuple[str, ...]) -> list[str]:
    probe = probe_imports(f"for m in {modules!r}: __import__(m)", watched)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return probe.imported


def test_no_flow_or_command_imports_resampling_or_plotting_at_start() -> None:
    assert _imported(FLOWS, ("imblearn", "matplotlib")) == []


def test_the_light_flows_import_no_model_fitting_or_statistics_at_start() -> None:
    assert _imported(LIGHT, ("sklearn", "scipy.stats", "optuna", "nannyml")) == []
