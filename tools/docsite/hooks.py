"""MkDocs hooks: the generated reference pages, and links that leave the site.

A page asks for generated text with a marker on a line of its own:

    <!-- generated: cli -->                      the typer app's commands (cli_reference)
    <!-- generated: settings -->                 every Settings option (settings_reference)
    <!-- generated: rest -->                     the app's OpenAPI schema (rest_reference)
    <!-- generated: docstring callstream.x -->   a module's docstring (the internals pages)
    <!-- checked: error codes -->                the build fails unless the page names every
                                                 ErrorCode and CloseCode of callstream.protocol

Pages link to files of the repository outside docs/ (the source of callstream.js, bench/README.md);
the site cannot serve those, so such a link is shown as the file's path in code, and a path that
names no file of the repository fails the build (tests/test_docs_links.py checks the same on GitHub).
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).parent))

from cli_reference import cli_reference
from rest_reference import rest_reference
from settings_reference import settings_reference

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: (\w+)(?: ([\w.]+))? -->$", re.MULTILINE)
CHECKED_ERRORS = "<!-- checked: error codes -->"
LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    source = Path(page.file.abs_src_path)
    markdown = MARKER.sub(lambda m: _generated(m.group(1), m.group(2), source), markdown)
    if CHECKED_ERRORS in markdown:
        _check_error_codes(markdown, source)
    return LINK.sub(lambda m: _outside_link(m, source, Path(config["docs_dir"])), markdown)


def _generated(kind: str, argument: str | None, source: Path) -> str:
    if kind == "cli":
        return cli_reference()
    if kind == "settings":
        return settings_reference()
    if kind == "rest":
        return rest_reference()
    if kind == "docstring" and argument:
        return _docstring(argument)
    raise PluginError(f"{source.name}: no generator for <!-- generated: {kind} -->")


def _docstring(module_name: str) -> str:
    doc = importlib.import_module(module_name).__doc__
    if not doc:
        raise PluginError(f"{module_name} has no docstring to show")
    return f"From `{module_name}`:\n\n" + "\n".join(f"> {line}".rstrip() for line in doc.strip().splitlines())


def _check_error_codes(markdown: str, source: Path) -> None:
    from callstream.protocol import CloseCode, ErrorCode

    missing = [f"`{code.value}`" for code in ErrorCode if f"`{code.value}`" not in markdown]
    missing += [f"`{code.value}`" for code in CloseCode if f"`{code.value}`" not in markdown]
    if missing:
        raise PluginError(f"{source.name} does not describe {', '.join(missing)}")


def _outside_link(match: re.Match[str], source: Path, docs_dir: Path) -> str:
    text, target = match.group(1), match.group(2)
    if re.match(r"^[a-z]+:", target):
        return match.group(0)
    resolved = (source.parent / target).resolve()
    if resolved.is_relative_to(docs_dir.resolve()):
        return match.group(0)
    if not resolved.is_relative_to(ROOT) or not resolved.exists():
        raise PluginError(f"{source.name}: {target} names no file of the repository")
    path = resolved.relative_to(ROOT).as_posix()
    return text if text.strip("`") == path else f"{text} (`{path}` in the repository)"
