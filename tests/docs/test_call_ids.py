"""A reader follows the site in order, in one server: a page must not publish to (or listen to) a
call an earlier page has ended, since the server then refuses it (`call … has ended`) or a
listener waits for audio that never comes. Each page's test runs on a server of its own, so only
reading the pages in the site's order finds such a call."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAV_PAGE = re.compile(r"^\s*- (?:[^:\n]+: )?(?P<path>[\w/.-]+\.md)\s*$", re.MULTILINE)
BLOCK = re.compile(r"^```(?P<language>\w+)(?P<info>[^\n]*)\n(?P<source>.*?)^```", re.MULTILINE | re.DOTALL)
CALL = r"(?P<call>[A-Za-z0-9_.:-]+)"
# What runs against a call: a Publisher's events and audio, an event POSTed, a listen.
USES = [
    re.compile(rf'\b(?:publish|send|send_wait|send_audio)\(\s*"{CALL}"'),
    re.compile(rf"-X POST \S*/v1/calls/{CALL}/events"),
    re.compile(rf'"type":\s*"listen",\s*"call_id":\s*"{CALL}"'),
]
ENDS = [
    re.compile(rf'\b(?:publish|send|send_wait)\(\s*"{CALL}",\s*"call\.ended"'),
    re.compile(rf"-X POST \S*/v1/calls/{CALL}/events[^`]*?\"call\.ended\""),
]


def _site_pages() -> list[Path]:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    return [ROOT / "docs" / m["path"] for m in NAV_PAGE.finditer(nav)]


def _runnable_blocks(page: Path) -> list[str]:
    """The blocks a reader runs or saves to run: not a fragment, not one the page says to skip."""
    text = page.read_text()
    blocks = []
    for block in BLOCK.finditer(text):
        if block["language"] not in ("sh", "python", "js") or 'title="fragment' in block["info"]:
            continue
        if text[: block.start()].rstrip().endswith("-->") and "skip: next" in text[: block.start()].rsplit("<!--", 1)[-1]:
            continue
        blocks.append(block["source"])
    return blocks


def _calls(patterns: list[re.Pattern[str]], source: str) -> set[str]:
    return {m["call"] for pattern in patterns for m in pattern.finditer(source)}


def test_no_page_runs_against_a_call_an_earlier_page_ended() -> None:
    pages = _site_pages()
    assert ROOT / "docs/getting-started/publish.md" in pages
    assert ROOT / "docs/audio.md" in pages
    ended: dict[str, str] = {}  # call id → the page that ended it
    clashes = []
    for page in pages:
        name = str(page.relative_to(ROOT))
        blocks = _runnable_blocks(page)
        for source in blocks:
            clashes += [f"{name} uses {call}, which {ended[call]} ended" for call in _calls(USES, source) if call in ended]
        for source in blocks:
            ended.update(dict.fromkeys(_calls(ENDS, source), name))
    assert "call_42" in ended, "the getting-started pages end call_42: the test no longer reads them"
    assert not clashes, "\n".join(clashes)
