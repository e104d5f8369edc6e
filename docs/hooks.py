"""MkDocs hooks: the README as the site's home page and the CLI reference from ``reggaeton --help``.

Both pages are generated at build time, never committed: the site cannot drift from the README or
from the command line. Every page's links are written for the repository (GitHub renders them there):
on the site a link to another page becomes a link to that page, and a link to a file the site does not
hold (``prefect.yaml``, ``infra/``) becomes the file's path in code, so strict builds find no broken link.
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


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
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
