"""Every code block of README and docs/ is run by test_snippets.py, or says why it is not.

A reader cannot tell a tested block from an untested one, so none may be left out by accident:
a block a reader would run (`sh`, `python`, `js`, and the `output` shown after it) is on a page
tests/docs/pages.py reads, or follows a `<!-- skip: next "why" -->` comment, or is titled
`fragment: …` (a part of a program); other code (`console`, `bash`, `html` …) is written as
those kinds or titled a fragment; a block without a language says what it is (`text` for a
diagram, a log or a terminal's picture). Data (`json`, `ini`, `nginx` …) is shown, not run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from sybil import Example

from tests.docs.pages import PATHS, ROOT
from tests.docs.snippets import RUN_LANGUAGES, SYBIL, Block, fenced_blocks

DATA_LANGUAGES = {"text", "json", "ini", "nginx", "yaml", "toml"}


def unmarked(root: Path, run: set[str]) -> list[str]:
    """`page:line: what is wrong` for every code block under `root` that is neither run (its page
    in `run`) nor marked as not run."""
    problems = []
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        name = path.relative_to(root).as_posix()
        document = SYBIL.parse(path)
        blocks = fenced_blocks(document)
        skip_comments = _skip_comments(document.examples())
        for block in blocks:
            where = f"{name}:{document.text.count(chr(10), 0, block.start) + 1}"
            before = [b for b in blocks if b.start < block.start]
            skipped = any(
                comment < block.start and not any(comment < b.start for b in before) for comment in skip_comments
            )
            if skipped and not block.runs:
                problems.append(f"{where}: a skip comment before a block that does not run skips the next one that does")
            elif block.language is None:
                problems.append(f"{where}: a block with no language: say what it is (text for a diagram or a log)")
            elif block.fragment or block.language in DATA_LANGUAGES:
                if block.shows is not None and not block.fragment:
                    problems.append(f"{where}: an output after a {block.language} block, which prints nothing")
            elif block.language not in RUN_LANGUAGES:
                problems.append(f"{where}: a {block.language} block: write it as sh, python or js (and output), or title it fragment: …")
            elif not skipped and name not in run:
                problems.append(f"{where}: no test runs this {block.language} block: read its page in tests/docs/pages.py, or mark it")
    return problems


def _skip_comments(examples: Iterable[Example]) -> list[int]:
    """Where the `skip: next` comments are (start/end ranges are not used by the pages)."""
    return [example.region.start for example in examples if not isinstance(example.parsed, Block)]


def test_every_code_block_is_run_or_marked_as_not_run() -> None:
    run = {page for files, _ in PATHS.values() for page in files}
    assert unmarked(ROOT, run) == []


class _NavLoader(yaml.SafeLoader):
    """mkdocs.yml as data: its `!!python/…` tags (the slugify function) read as nothing."""


_NavLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def getting_started() -> list[str]:
    """README and the pages of the site's Getting started section, as mkdocs.yml lists them."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_NavLoader)  # noqa: S506 (a SafeLoader)
    section: list[dict[str, Any]] = next(entry["Getting started"] for entry in config["nav"] if "Getting started" in entry)
    return ["README.md", *(f"docs/{page}" for entry in section for page in entry.values())]


SET_UP = "make demo    # the service"  # README's first block: its two set-up commands, `make test` being this suite


def test_the_getting_started_path_has_no_fragment_and_no_skipped_block() -> None:
    """A newcomer's first pages are run whole: every block on them is one a test runs, except
    README's set-up block (`make demo` and `make test`), whose `make demo` the next block runs."""
    found = []
    for name in getting_started():
        document = SYBIL.parse(ROOT / name)
        blocks = fenced_blocks(document)
        set_up = name == "README.md" and bool(blocks) and document.text[blocks[0].start :].split("\n", 2)[1].startswith(SET_UP)
        skips = [c for c in _skip_comments(document.examples()) if not (set_up and c < blocks[0].start)]
        found += [f"{name}: a skip comment" for _ in skips]
        found += [f"{name}: {block.title}" for block in fenced_blocks(document) if block.fragment]
    assert found == []
