"""The docs agree with each other and with the code they describe.

- The Spanish guide documents the same commands as the English docs (README and runbook), and the other
  way round: every command of their ```bash blocks, reduced to its program and subcommand
  (``reggaeton promote``, ``make demo``, ``docker-compose up``), is in both languages.
- The Spanish guide has a section for each top-level section of the README (``MIRRORED``); a README
  section that is neither mirrored nor listed in ``NOT_MIRRORED`` fails, so a new one is a decision.
- Every figure the Spanish guide gives is also in the English docs (one source: mostly the benchmarks
  page), and every figure of the README's benchmark headlines is on the benchmarks page.
- The README's feature table is the schema (`reggaeton/schema.py`), and the layers the docs list are the
  import contract's (`pyproject.toml`).

Plain text reading: fast tier. The commands themselves run in tests/loop/test_operator_commands.py.
"""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict

from docs_support import (
    ENGLISH_DOCS,
    REPO_ROOT,
    SPANISH_GUIDE,
    bash_commands,
    command_key,
    headings,
    number_tokens,
    read,
    section,
)

from reggaeton.schema import FEATURES

# README top-level section -> its Spanish section (`## ...` in docs/es/README.md).
MIRRORED: dict[str, str] = {
    "What you need": "Qué necesitas",
    "Quick start": "Inicio rápido",
    "The model's inputs": "Las variables del modelo",
    "Concepts": "Conceptos",
    "Operating": "Operación",
    "Deployment": "Despliegue",
    "Benchmarks": "Cifras medidas",
    "Development": "Desarrollo",
}
# README top-level sections the Spanish guide does not mirror, each with why.
NOT_MIRRORED: dict[str, str] = {
    "Contents": "a table of contents: the Spanish guide has its own (Contenido)",
}
# Pages whose figures the Spanish guide may quote.
FIGURE_SOURCES = (*ENGLISH_DOCS, "docs/benchmarks.md", "docs/architecture.md")
# Integers this small are words in one language and digits in the other ("two runs", "2 corridas").
SMALLEST_FIGURE = 10


def _keys(docs: tuple[str, ...]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = defaultdict(list)
    for doc in docs:
        for command in bash_commands(read(doc)):
            keys[command_key(command)].append(f"{doc}: {command}")
    return keys


def test_command_keys_keep_the_program_its_subcommand_and_the_stack() -> None:
    assert command_key('.venv/bin/reggaeton promote --version 1 --reason "a b"') == "reggaeton promote"
    assert command_key(".venv/bin/reggaeton --stack compose gate") == "reggaeton --stack compose gate"
    assert command_key(".venv/bin/reggaeton status --stack compose") == "reggaeton --stack compose status"
    assert command_key("make bench-train DATA=FOLDER") == "make bench-train"
    assert command_key("docker-compose up -d --scale api=3") == "docker-compose up"
    assert command_key(".venv/bin/python -m infra.check_secrets --new-env") == "python -m infra.check_secrets"
    assert command_key("export REGGAETON_PROMOTION__SLICES='[1]'") == "export REGGAETON_PROMOTION__SLICES"
    assert command_key("curl -s -X POST http://127.0.0.1:8000/predict -d '{}'") == "curl /predict"
    assert command_key("REGGAETON_MLFLOW__PORT=5001 make demo") == "make demo"


def test_the_spanish_guide_documents_every_command_of_the_english_docs_and_no_other() -> None:
    english, spanish = _keys(ENGLISH_DOCS), _keys((SPANISH_GUIDE,))
    missing_in_spanish = {key: english[key] for key in english.keys() - spanish.keys()}
    missing_in_english = {key: spanish[key] for key in spanish.keys() - english.keys()}
    assert not missing_in_spanish, f"documented in English, not in {SPANISH_GUIDE}: {missing_in_spanish}"
    assert not missing_in_english, f"documented in {SPANISH_GUIDE}, not in English: {missing_in_english}"


def test_the_spanish_guide_mirrors_the_readme_sections() -> None:
    readme = headings(read("README.md"), 2)
    undecided = [h for h in readme if h not in MIRRORED and h not in NOT_MIRRORED]
    assert not undecided, f"README sections neither in MIRRORED nor in NOT_MIRRORED: {undecided}"
    gone = [h for h in (*MIRRORED, *NOT_MIRRORED) if h not in readme]
    assert not gone, f"MIRRORED/NOT_MIRRORED name sections the README no longer has: {gone}"
    spanish = headings(read(SPANISH_GUIDE), 2)
    missing = [f"{english} -> {MIRRORED[english]}" for english in readme if english in MIRRORED]
    missing = [m for m in missing if m.split(" -> ")[1] not in spanish]
    assert not missing, f"README sections without their section in {SPANISH_GUIDE}: {missing}"
    # In the same order, so that a reader can follow one beside the other.
    order = [spanish.index(MIRRORED[h]) for h in readme if h in MIRRORED]
    assert order == sorted(order), f"{SPANISH_GUIDE}'s sections are not in the README's order"


def test_every_figure_of_the_spanish_guide_is_in_the_english_docs() -> None:
    english = set().union(*(number_tokens(read(doc)) for doc in FIGURE_SOURCES))
    spanish = number_tokens(read(SPANISH_GUIDE), spanish=True)
    only_spanish = sorted(t for t in spanish - english if not (t.isdigit() and int(t) <= SMALLEST_FIGURE))
    assert not only_spanish, f"only in {SPANISH_GUIDE} (write them on docs/benchmarks.md): {only_spanish}"


def test_the_readme_benchmark_headlines_are_on_the_benchmarks_page() -> None:
    headlines = number_tokens(section(read("README.md"), "## Benchmarks"))
    page = number_tokens(read("docs/benchmarks.md"))
    missing = sorted(t for t in headlines - page if not (t.isdigit() and int(t) <= SMALLEST_FIGURE))
    assert not missing, f"README benchmark figures not on docs/benchmarks.md: {missing}"


def test_the_readme_feature_table_is_the_schema() -> None:
    inputs = section(read("README.md"), "## The model's inputs")
    rows = [
        [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        for line in inputs.splitlines()
        if line.startswith("| `")
    ]
    expected = [[f.name, f.range_text(), f.description] for f in FEATURES]
    assert rows == expected


def test_the_layers_the_docs_list_are_the_import_contract() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    layers = " > ".join(contract["layers"])
    for doc in ("docs/architecture.md", SPANISH_GUIDE):
        listed = re.findall(r"\*\*(cli > [^*]+)\*\*", read(doc))
        assert listed == [layers], (doc, listed, layers)
