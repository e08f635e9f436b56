"""The documentation's code blocks as Sybil examples, and what running one means.

Sybil finds the blocks (its Markdown lexer, its `<!-- skip: next -->` comments); this module says
what each kind of block does when a page is read in order, in one `Shell`:

    ```sh                   typed into the page's terminal; must exit 0
    ```python               a program, run with `python` from that terminal
    ```python title="x.py"  a file the reader saves (as x.py) and a later block runs; also js
    ```output               what the block before it printed, compared line by line
    ```python title="fragment: …"   a part of a program: not run (nor is data: text, json, ini …)

A page names the server as the reader's would be, `127.0.0.1:8080`, and a webhook receiver of the
reader's `127.0.0.1:9000`; the test's own server and receiver have ports of their own, so the
ports are replaced in every block, shown outputs included. A command whose comment says `Ctrl-C`
(the last of its block) runs until the reader would press it: once it has printed what the page
shows after it (or, when the page shows nothing, once it has printed something), it gets a SIGINT,
and that stop is a success (log lines it printed after the page's lines, as the reader pressed
Ctrl-C, are not compared). A command whose comment says `exits N` (the last of its block) is shown
failing: its exit status must be N. In an output, what differs on every run (key secrets and ids,
control request ids, login codes, JWTs, `ts`, a Publisher's event ids, webhook endpoint ids,
secrets and message ids, the demo's folder) is compared by shape.

A block that cannot run here (it installs packages, needs a machine of its own or a service's
account) follows a `<!-- skip: next "why" -->` comment; a part of a program is titled
`fragment: …`. tests/docs/test_marked.py checks that every other code block is run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import SkipParser
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

from tests.docs.shell import Ran, Shell

FENCE_INFO = re.compile(r"(?P<info>.*)$\n", re.MULTILINE)
INFO = re.compile(r'(?P<language>[\w-]+)(?: +title="(?P<title>[^"]*)")?[ \t]*\Z')
RUN_LANGUAGES = {"sh", "python", "js"}
CTRL_C = re.compile(r"^(?P<command>.*?)\s+#[^\n]*Ctrl-C[^\n]*\n?\Z", re.MULTILINE)
EXITS = re.compile(r"^(?P<command>.*?)\s+#[^\n]*\bexits (?P<status>\d+)\b[^\n]*\n?\Z", re.MULTILINE)
BACKGROUND_WAIT_S = 60.0
SETTLE_S = 1.0  # with nothing to wait for, how long a reader watches the first lines
# A server's log line (configure_logging) it may write after the page's lines as it stops: never
# an error (those are compared).
STOPPING_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) \S+ ")
STOPPED = (0, 130)  # exit statuses of a command stopped with Ctrl-C: by its handler, or by the signal
VOLATILE = [
    (re.compile(r"cs_[A-Za-z0-9_-]{20,}"), "cs_<secret>"),
    (re.compile(r"key_[0-9a-f]{16}"), "key_<id>"),
    (re.compile(r"ctl_[0-9a-f]{20}"), "ctl_<id>"),
    (re.compile(r"login=[A-Za-z0-9_.-]+"), "login=<code>"),
    (re.compile(r"eyJ[\w-]*\.[\w-]*\.[\w-]*"), "<jwt>"),
    (re.compile(r'"ts":\d{13}'), '"ts":<ms>'),
    (re.compile(r'"id":"p[0-9a-f]{16}-'), '"id":"p<publisher>-'),  # a Publisher's event ids
    (re.compile(r"\bwh_[0-9a-f]{20}\b"), "wh_<id>"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/]{43}="), "whsec_<secret>"),
    (re.compile(r"\bmsg_[0-9a-f]{24}\b"), "msg_<id>"),
    (re.compile(r"callstream-demo-\w+"), "callstream-demo-<dir>"),  # `callstream demo`'s own folder
]


@dataclass(frozen=True, slots=True)
class Block:
    """A fenced block: its language (None when it has none), its title, and what the page shows
    it printed (the `output` block right after it)."""

    start: int
    end: int
    language: str | None
    title: str | None
    source: str
    shows: str | None = None

    @property
    def fragment(self) -> bool:
        return (self.title or "").startswith("fragment")

    @property
    def runs(self) -> bool:
        """A block a reader runs or saves (unless the page marks it skipped)."""
        return self.language in RUN_LANGUAGES and not self.fragment


class Page:
    """What the evaluators share while one page runs: its shell, its port, the last block's output."""

    def __init__(self, shell: Shell, port: int, receiver_port: int) -> None:
        self.shell = shell
        self.port = port
        self.receiver_port = receiver_port
        self.last: Ran | None = None
        self.count = 0

    def localize(self, text: str) -> str:
        return text.replace(":8080", f":{self.port}").replace(":9000", f":{self.receiver_port}")


def fenced_blocks(document: Document) -> list[Block]:
    """Every fenced block of the page, in order, each with the output shown after it (an
    `output` block is a part of the block before it, not a block of its own)."""
    found = []
    for lexed in RawFencedCodeBlockLexer(info_pattern=FENCE_INFO)(document):
        info = INFO.match(str(lexed.lexemes["info"]).strip())
        language, title = (info.group("language"), info.group("title")) if info else (None, None)
        found.append(Block(lexed.start, lexed.end, language, title, str(lexed.lexemes["source"])))
    blocks = []
    for block, after in zip(found, [*found[1:], None], strict=False):  # the last block has no after
        if block.language != "output":
            blocks.append(replace(block, shows=after.source if after and after.language == "output" else None))
    return blocks


def parse_blocks(document: Document) -> Iterator[Region]:
    """Every fenced block a reader runs or saves, with the output the page shows after it."""
    for block in fenced_blocks(document):
        if block.runs:
            yield Region(block.start, block.end, block, evaluate)


SYBIL = Sybil(parsers=[parse_blocks, SkipParser()])


def evaluate(example: Example) -> None:
    page: Page = example.namespace["page"]
    block: Block = example.parsed
    source = page.localize(block.source)
    shows = None if block.shows is None else page.localize(block.shows)
    if block.title:
        assert shows is None, f"an output after {block.title}, a file the reader saves: it prints nothing"
        page.shell.write(block.title, source)
        return
    if block.language == "python":
        page.count += 1
        script = page.shell.write(f".snippets/program{page.count}.py", source)
        source = f"python {script.relative_to(page.shell.cwd)}"
    elif block.language != "sh":
        raise AssertionError(f"a {block.language} block needs a title: the file the reader saves it as")
    exits = EXITS.search(source)
    if exits is not None:
        _run_failing(page, source[: exits.start()], exits.group("command"), int(exits.group("status")))
    elif (stop := CTRL_C.search(source)) is not None:
        _run_until_stopped(page, source[: stop.start()], stop.group("command"), shows)
    else:
        page.last = ran = page.shell.run(source)
        assert ran.status == 0, f"exit status {ran.status}; it printed:\n{ran.output()}"
    if shows is not None:
        compare(page, shows)


def _run_until_stopped(page: Page, before: str, command: str, shows: str | None) -> None:
    """A block whose last command runs until the reader presses Ctrl-C."""
    ran = page.shell.run(before + page.shell.interruptible(command))
    assert ran.status == 0, f"exit status {ran.status}:\n{ran.output()}"
    assert ran.last_job is not None
    _watch(ran, shows)
    status = page.shell.interrupt(ran.last_job)
    assert status in STOPPED, f"exit status {status} after Ctrl-C; it printed:\n{ran.output()}"
    page.last = Ran(0, ran.output_path, started_jobs=False, stopped=True)


def _run_failing(page: Page, before: str, command: str, expected: int) -> None:
    """A block whose last command the page shows failing: the rest must succeed, and that
    command must exit with the status the page says."""
    page.last = ran = page.shell.run(f"{before}snippet_status=0\n{command} || snippet_status=$?\n")
    assert ran.status == 0, f"exit status {ran.status}; it printed:\n{ran.output()}"
    status = int(page.shell.run("echo $snippet_status").output().split()[-1])
    assert status == expected, f"exit status {status}, the page says {expected}; it printed:\n{ran.output()}"


def _watch(ran: Ran, shows: str | None) -> None:
    """Wait as the reader would before pressing Ctrl-C: until the command has printed what the page
    shows, or, when it shows nothing, until it has printed something (and a moment more)."""
    deadline = time.monotonic() + BACKGROUND_WAIT_S
    first_output: float | None = None
    while time.monotonic() < deadline:
        printed = normalized(ran.output())
        if shows is not None and _in_order(normalized(shows), printed):
            return
        if shows is None and printed:
            first_output = first_output or time.monotonic()
            if time.monotonic() - first_output >= SETTLE_S:
                return
        time.sleep(0.1)


def compare(page: Page, shown: str) -> None:
    """The shown output against what the last block printed: exactly (but for the log lines of a
    command stopped with Ctrl-C, after the shown ones), or, when that block left jobs running (a
    server's lines go on), as lines that appear in order within a deadline."""
    ran = page.last
    assert ran is not None, "an output block with no command before it"
    expected = normalized(shown)
    if not ran.started_jobs:
        actual = normalized(ran.output())
        if ran.stopped:  # what a server logged after the page's lines, as the reader pressed Ctrl-C
            late = actual[len(expected) :]
            actual = actual[: len(expected)] + [line for line in late if not STOPPING_LOG_LINE.match(line)]
        assert actual == expected, _difference(expected, actual)
        return
    deadline = time.monotonic() + BACKGROUND_WAIT_S
    while True:
        actual = normalized(ran.output())
        if _in_order(expected, actual):
            return
        if time.monotonic() > deadline:
            raise AssertionError(_difference(expected, actual))
        time.sleep(0.1)


def normalized(text: str) -> list[str]:
    for pattern, shape in VOLATILE:
        text = pattern.sub(shape, text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _in_order(expected: list[str], actual: list[str]) -> bool:
    remaining = iter(actual)
    return all(any(line == seen for seen in remaining) for line in expected)


def _difference(expected: list[str], actual: list[str]) -> str:
    return "the page shows:\n" + "\n".join(expected) + "\n\nthe command printed:\n" + "\n".join(actual)
