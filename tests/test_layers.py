"""The house plan is enforced: `make lint` runs import-linter with the contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("reggaeton", "adapters", "flows", "serving", "monitoring", "infra", "embedded", "cli")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_of_the_project(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(project: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    # The copy comes first on the path, ahead of the editable install of the real tree.
    env = {**os.environ, "PYTHONPATH": str(project)}
    only = [] if contract is None else ["--contract", contract]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *only],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _add_import(module: Path, statement: str) -> None:
    text = module.read_text()
    head, _, rest = text.partition("from __future__ import annotations\n")
    module.write_text(f"{head}from __future__ import annotations\n{statement}\n{rest}")


def test_the_tree_keeps_its_contracts(tmp_path: Path) -> None:
    result = _lint_imports(_copy_of_the_project(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract", "message"),
    [
        ("serving/app.py", "import flows.train", "layers", "serving is not allowed to import flows"),
        (
            "serving/app.py",
            "import monitoring.store",
            "light-serving",
            "serving is not allowed to import monitoring",
        ),
        (
            "reggaeton/schema.py",
            "import adapters.registry",
            "layers",
            "reggaeton is not allowed to import adapters",
        ),
        ("reggaeton/metrics.py", "import mlflow", "pure-core", "reggaeton is not allowed to import mlflow"),
        ("adapters/registry.py", "import serving.app", "layers", "adapters is not allowed to import serving"),
    ],
)
def test_a_wrong_way_import_fails_lint(
    tmp_path: Path, module: str, statement: str, contract: str, message: str
) -> None:
    project = _copy_of_the_project(tmp_path)
    _add_import(project / module, statement + "  # noqa")
    result = _lint_imports(project, contract)
    assert result.returncode != 0
    assert "1 broken" in result.stdout and message in result.stdout, result.stdout
