"""MkDocs hooks: the README as the site's home page and the CLI reference from ``reggaeton --help``.

Both pages are generated at build time, never committed: the site cannot drift from the README or
from the command line. Every page is written for the repository (GitHub renders it there): on the site a
link to another page becomes a link to that page, a link to a file the site does not hold
(``prefect.yaml``, ``infra/``) becomes the file's path in code, so strict builds find no broken link, and
lists read as GitHub reads them (see ``github_lists``).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# [text](target) where target is relative (not a URL, not an anchor of the same page).
LINK = re.compile(r"\[([^\]]*)\]\((?!https?://|#|mailto:)([^)\s]+)\)")
# The start of a list item: a bullet, or the number of an ordered list.
LIST_ITEM = re.compile(r"^( *)([-*+]|\d+\.) ")


def _source_of(page: Page) -> Path:
    """Where the page's Markdown lives in the repository."""
    return README if page.file.src_uri == "index.md" else DOCS / page.file.src_uri


def _site_path(target: Path) -> str | None:
    """The site's path of a repository file, when the site has it as a page."""
    if target == README:
        return "index.md"
    if target.suffix == ".md" and target.is_relative_to(DOCS):
        return target.relative_to(DOCS).as_posix()
    return None


def github_lists(markdown: str) -> str:
    """Lists as GitHub reads them, for Python-Markdown.

    GitHub starts a list right after a paragraph's line and nests a list indented by two spaces;
    Python-Markdown wants a blank line before a list and four spaces per level, or it prints the items
    as the paragraph's text. So: a blank line before a list that follows other text (and before an item
    that follows a paragraph of the item before), and the indentation of every indented line inside a
    list (its items, their continuations, their code blocks) doubled.
    """
    lines: list[str] = []
    in_list = fenced = loose = False  # loose: the current item has a blank line (a paragraph of its own)
    shift = 0  # the spaces added to the current line (and to a code block's text, with its fence)
    for line in markdown.splitlines():
        fence = line.lstrip().startswith("```")
        if fenced:
            lines.append(" " * shift + line)
            fenced = not fence
            continue
        indent = len(line) - len(line.lstrip(" "))
        if LIST_ITEM.match(line):
            if (not in_list or loose) and lines and lines[-1].strip():
                lines.append("")
            in_list, loose = True, False
        elif line.strip() and indent == 0:
            in_list = False
        elif in_list and not line.strip():
            loose = True
        shift = indent if in_list else 0
        lines.append(" " * shift + line)
        fenced = fence
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    markdown = github_lists(markdown)
    source = _source_of(page)
    here = Path(page.file.src_uri).parent

    def rewrite(match: re.Match[str]) -> str:
        text, target = match.groups()
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve()
        if not resolved.exists():
            return match.group(0)  # a broken link stays one: the strict build names it
        site = _site_path(resolved)
        if site is None or files.get_file_from_path(site) is None:
            return f"{text} (`{resolved.relative_to(ROOT).as_posix()}`)" if text else f"`{path}`"
        relative = os.path.relpath(site, here.as_posix() or ".")
        return f"[{text}]({relative}{'#' + anchor if anchor else ''})"

    return LINK.sub(rewrite, markdown)


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def cli_page() -> str:
    """One section per command, each with its ``--help`` as the command prints it."""
    from cli.main import build_parser

    parser = build_parser()
    lines = [
        "# Command line reference",
        "",
        "Generated from `reggaeton --help` and each command's `--help` when this site is built.",
        "",
        "```text",
        _help(parser),
        "```",
    ]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        lines += ["", f"## `reggaeton {name}`", "", "```text", _help(sub), "```"]
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "index.md", content=README.read_text()))
    files.append(File.generated(config, "cli.md", content=cli_page()))
    return files
