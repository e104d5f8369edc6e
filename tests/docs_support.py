"""Reading the docs as the tests check them: their ```bash commands, sections, fenced blocks and figures."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
# The English docs whose commands the Spanish guide must also document (and the other way round).
ENGLISH_DOCS = ("README.md", "docs/operations.md")
SPANISH_GUIDE = "docs/es/README.md"
# Every page whose commands run against a live stack (tests/loop/test_operator_commands.py).
COMMAND_DOCS = (*ENGLISH_DOCS, SPANISH_GUIDE)


def read(doc: str) -> str:
    return (REPO_ROOT / doc).read_text()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of a Markdown text, in order: (its language, its text)."""
    blocks: list[tuple[str, str]] = []
    language: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(lines)))
                language = None
            continue
        if language is not None:
            lines.append(line)
    return blocks


def block_commands(block: str) -> list[str]:
    """The command lines of a ```bash block: comments and blank lines dropped."""
    commands = []
    for line in block.splitlines():
        command = re.split(r"\s+#", line)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def bash_commands(text: str) -> list[str]:
    """The command lines of every ```bash (or ```sh) block of a Markdown text, in order."""
    blocks = [block for language, block in fenced_blocks(text) if language in ("bash", "sh")]
    return [command for block in blocks for command in block_commands(block)]


def section(text: str, heading: str) -> str:
    """The text under a heading (``## Quick start``) up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next(
        (
            i
            for i in range(start, len(lines))
            if re.match(f"#{{1,{level}}} ", lines[i]) and not _in_fence(lines[start:i])
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def _in_fence(lines: list[str]) -> bool:
    return sum(line.startswith("```") for line in lines) % 2 == 1


def headings(text: str, level: int) -> list[str]:
    """The headings of one level (2: ``## ...``) outside fenced blocks, without their hashes."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#" * level + " "):
            found.append(line[level + 1 :].strip())
    return found


def command_key(command: str) -> str:
    """A documented command reduced to its program and what it does, the unit both languages must share.

    ``.venv/bin/reggaeton promote --version 1 --reason "..."`` -> ``reggaeton promote`` (with
    ``--stack compose``: ``reggaeton --stack compose promote``, another command: another stack);
    ``make bench-train DATA=FOLDER`` -> ``make bench-train``; ``docker-compose up -d`` ->
    ``docker-compose up``; ``python -m infra.check_secrets --new-env`` -> ``python -m infra.check_secrets``;
    ``export NAME=...`` -> ``export NAME``; ``curl ... http://127.0.0.1:8000/predict`` -> ``curl /predict``.
    """
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value before the program
        words = words[1:]
    program = Path(words[0]).name
    rest = words[1:]
    if program == "export":
        return f"export {rest[0].split('=', 1)[0]}"
    if program == "curl":
        url = next(w for w in rest if w.startswith(("http://", "https://")))
        return f"curl {urlsplit(url).path}"
    if program.startswith("python"):
        program = "python"
        if rest and rest[0] in ("-m", "-c"):
            return f"python {rest[0]} {rest[1]}" if rest[0] == "-m" else "python -c"
    stack, subcommand = "", None
    arguments = iter(rest)
    for word in arguments:
        if word == "--stack" or word.startswith("--stack="):
            value = word.partition("=")[2] or next(arguments, "")
            stack = f" --stack {value}" if value != "local" else ""
        elif subcommand is None and not word.startswith("-"):
            subcommand = word
    if subcommand is not None:
        return f"{program}{stack} {subcommand}"
    return f"{program} {rest[0]}" if rest else program


def number_tokens(text: str, *, spanish: bool = False) -> set[str]:
    """The figures of a text, written the same way whichever language wrote them.

    English prose writes ``2,292`` and ``0.94``, Spanish prose ``2.292`` and ``0,94``: both become ``2292``
    and ``0.94``. Code (fenced blocks, `spans`) is written the English way in both languages.
    """
    code = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
    found = set()
    for part in code.findall(text):
        found |= _numbers(part, thousands=",", decimal=".")
    thousands, decimal = (".", ",") if spanish else (",", ".")
    return found | _numbers(code.sub(" ", text), thousands=thousands, decimal=decimal)


def _numbers(text: str, *, thousands: str, decimal: str) -> set[str]:
    found = set()
    for match in re.finditer(r"(?<![\w.,])\d[\d.,]*\d|(?<![\w.,])\d", text):
        token = match.group(0)
        if re.fullmatch(r"\d{1,3}(" + re.escape(thousands) + r"\d{3})+", token):
            token = token.replace(thousands, "")  # 2,292 / 2.292
        elif thousands not in token:
            token = token.replace(decimal, ".")  # 0.94 / 0,94
        found.add(token)  # else as written: a version, an address (3.11, 127.0.0.1)
    return found
