"""The documentation stands alone in a clone: every relative link and image in README.md, docs/**/*.md
and the benchmark's READMEs names a file of this repository (never one beside it), and every
`#anchor` names a heading of its target, as GitHub renders it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from itertools import pairwise
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "bench" / "README.md"]
PAGES.append(ROOT / "bench" / "results" / "README.md")
MARKDOWN = MarkdownIt("commonmark").enable("table")


def _tokens(page: Path) -> list[Token]:
    return MARKDOWN.parse(page.read_text(encoding="utf-8"))


def links(page: Path) -> Iterator[str]:
    """Every link target and image source of a page, code spans and blocks left out."""
    for block in _tokens(page):
        for token in block.children or []:
            if token.type == "link_open":
                yield str(token.attrGet("href") or "")
            elif token.type == "image":
                yield str(token.attrGet("src") or "")


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    tokens = _tokens(page)
    for opening, inline in pairwise(tokens):
        if opening.type != "heading_open":
            continue
        text = "".join(t.content for t in inline.children or [] if t.type in ("text", "code_inline"))
        base = slug(text)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def broken(page: Path) -> list[str]:
    """The page's relative links that leave the repository, name nothing, or name a missing anchor."""
    problems = []
    for href in links(page):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:  # http(s)://, mailto: … are not files of the repository
            continue
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not target.is_relative_to(ROOT):
            problems.append(f"{href}: outside the repository")
        elif not target.exists():
            problems.append(f"{href}: no such file")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in anchors(target):
            problems.append(f"{href}: no heading #{parts.fragment} in {target.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    problems = broken(page)
    assert not problems, "\n".join(problems)


def test_the_checker_sees_what_a_reader_would_click() -> None:
    page = ROOT / "docs" / "protocol.md"
    assert "operations.md" in {urlsplit(h).path for h in links(page)}
    assert "quotas-per-account" in anchors(page)
    assert "server--client" in anchors(page)  # "Server → client": the arrow goes, both spaces stay


def test_the_readmes_table_of_pages_names_each_page_of_docs_once() -> None:
    """README's "Documentation" table: one row a page, and every page of docs/ (the site's own
    index and the Getting started and internals sections, linked above it, aside)."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Documentation", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| [docs/")]
    named = [re.match(r"\| \[(docs/[^\]]*)\]", row)[1] for row in rows]  # type: ignore[index]
    assert len(named) == len(set(named)), sorted(n for n in named if named.count(n) > 1)
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} - {"docs/index.md"}
    assert pages <= set(named), sorted(pages - set(named))
