"""What a fresh interpreter imports: every flow run, command, server and container healthcheck is one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MARK = "imported-by-probe:"


@dataclass(frozen=True)
class Probe:
    """How the fresh interpreter ended, and which of the watched modules it had imported by then."""

    returncode: int
    stderr: str
    imported: list[str]


def probe_imports(code: str, watched: Iterable[str], *args: str, timeout_s: float = 300) -> Probe:
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a fresh interpreter at the project's root.

    The watched modules are read even when the code exits (a command's ``SystemExit``) or raises.
    """
    body = textwrap.indent(code.strip(), "    ")
    probe = f"import sys\ntry:\n{body}\nfinally:\n"
    probe += f"    print({_MARK!r} + ','.join(n for n in {sorted(watched)!r} if n in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )
    marks = [line for line in result.stdout.splitlines() if line.startswith(_MARK)]
    assert marks, f"the probe printed no import list: {result.stderr[-3000:]}"
    imported = [name for name in marks[-1].removeprefix(_MARK).split(",") if name]
    return Probe(result.returncode, result.stderr, imported)
