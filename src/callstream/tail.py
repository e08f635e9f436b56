"""``callstream tail``: live calls in the terminal, or NDJSON for ``jq``.

Built on :class:`callstream.Client`, so a tail survives server restarts and slow-consumer closes
and resumes each call where it left off: what a human watches (or a pipe receives) has no gaps
and no repeats.

The live view keeps one panel per call, titled with its turns as the server measured them (the
last latency, the p90, how many turns and interruptions); each answer's latency is marked on the
transcript, red past 1.5 s. A partial is shown dimmed until the final of the same
utterance (``utterance_id``, else the same speaker) replaces it, because that is how a person
reads speech being recognised. A call's metadata (agent, from → to, direction, campaign,
customer) shows on its start line and in its panel's title. Named calls start with what the server holds of them (the
call so far), then follow live; ``--all`` starts live. ``--json`` prints exactly the server's event messages, one per
line, flushed as they arrive, so ``callstream tail --json … | jq`` works in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

import orjson
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from callstream.client import (
    AgentState,
    CallEnded,
    Client,
    ControlRequested,
    ControlResult,
    ErrorEvent,
    Event,
    FunctionCall,
    FunctionResult,
    Subscribed,
    TranscriptFinal,
    TranscriptPartial,
)
from callstream.errors import AuthError
from callstream.quality import nearest_rank

__all__ = ["CallView", "TailView", "TurnFigures", "describe", "metadata_line", "tail_command"]

SPEAKER_STYLES: Final = {"user": "bold cyan", "agent": "bold green"}
STATE_STYLES: Final = {"listening": "cyan", "thinking": "yellow", "speaking": "green"}
END_STYLES: Final = {"completed": "green", "failed": "red", "canceled": "yellow"}
SENTIMENT_STYLES: Final = {"positive": ("▲", "green"), "negative": ("▼", "red"), "neutral": ("·", "dim")}
MAX_LINES: Final = 200  # per call: a tail shows the recent conversation, not the whole call
SHOWN_CHARS: Final = 160
REFUSALS: Final = frozenset({"invalid_message", "forbidden"})  # a subscription the server will never serve
LATENCY_WARN_MS: Final = 1500  # a turn slower than this shows red (the dashboard's default too)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _speaker(speaker: str) -> Text:
    return Text(f"{speaker:>5} ", style=SPEAKER_STYLES.get(speaker, "bold"))


def _sentiment(event: TranscriptFinal) -> Text:
    sentiment = event.sentiment or {}
    label, score = sentiment.get("label"), sentiment.get("score")
    if not isinstance(label, str) or not isinstance(score, int | float):
        return Text()
    mark, style = SENTIMENT_STYLES.get(label, ("·", "dim"))
    return Text(f"{mark}{score:+.2f} ", style=style)


# The metadata keys the start line shows (docs/protocol.md, Call metadata), in this order.
SHOWN_METADATA: Final = ("agent", "from", "to", "direction", "campaign", "customer")


def metadata_of(event: Event) -> dict[str, Any] | None:
    """The metadata patch an event carries (`data.metadata`), if any."""
    patch = event.data.get("metadata")
    return patch if isinstance(patch, dict) else None


def metadata_line(metadata: dict[str, Any]) -> Text:
    """`agent ada · +15550100 → +15550199 inbound · campaign spring · customer cus_42`."""
    def shown(key: str) -> str | None:
        value = metadata.get(key)
        return None if value is None else _short(value)

    parts: list[str] = []
    if (agent := shown("agent")) is not None:
        parts.append(f"agent {agent}")
    route = " → ".join(v for v in (shown("from"), shown("to")) if v is not None)
    if (direction := shown("direction")) is not None:
        route = f"{route} {direction}".strip()
    if route:
        parts.append(route)
    parts += [f"{key} {value}" for key in ("campaign", "customer") if (value := shown(key)) is not None]
    return Text(" · ".join(parts), style="cyan")


def describe(event: Event) -> Text | None:
    """One line for an event in the transcript, or None for events shown elsewhere (state)."""
    if event.raw.get("type") in ("call.started", "call.metadata"):
        patch = metadata_of(event) or {}
        verb = "▶ call started" if event.raw.get("type") == "call.started" else "✎ metadata"
        details = metadata_line(patch)
        return Text.assemble((verb, "bold blue"), " · " if details else "", details)
    if isinstance(event, TranscriptFinal):
        # Sentiment before the text: a long sentence is cut at the panel's edge, the score is not.
        return Text.assemble(_speaker(event.speaker), _sentiment(event), event.text)
    if isinstance(event, FunctionCall):
        return Text.assemble(("    ƒ ", "yellow"), (event.name, "bold yellow"), f"({_short(event.args)})")
    if isinstance(event, FunctionResult):
        return Text.assemble(("    ↳ ", "yellow"), (event.name, "yellow"), f" → {_short(event.result)}")
    if isinstance(event, CallEnded):
        seconds = f" · {event.duration_ms / 1000:.1f} s" if event.duration_ms is not None else ""
        reason = f" ({event.reason})" if event.reason else ""
        style = END_STYLES.get(event.status, "magenta")
        return Text(f"■ call ended: {event.status}{seconds}{reason}", style=f"bold {style}")
    if isinstance(event, ControlRequested | ControlResult):
        return _control_line(event)
    if isinstance(event, ErrorEvent):
        return Text(f"! {event.code}: {event.message}", style="red")
    if isinstance(event, AgentState):
        return _turn(event)
    return None


def _ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _turn(event: AgentState) -> Text | None:
    """The server's figures on an agent state: the turn's latency, or that the user cut in."""
    if event.latency_ms is not None:
        style = "red" if event.latency_ms > LATENCY_WARN_MS else "dim"
        return Text(f"    ⏱ {_ms(event.latency_ms)}", style=style)
    if event.interrupted:
        return Text("    ✂ interrupted by the user", style="yellow")
    return None


@dataclass
class TurnFigures:
    """A call's turns as its events carry them (the server wrote them in: docs/quality.md)."""

    latencies: list[int] = field(default_factory=list)
    interruptions: int = 0

    def apply(self, event: AgentState) -> None:
        if event.latency_ms is not None:
            self.latencies.append(event.latency_ms)
        self.interruptions += event.interrupted

    def badge(self) -> Text:
        if not self.latencies and not self.interruptions:
            return Text()
        parts: list[tuple[str, str]] = []
        if self.latencies:
            last = self.latencies[-1]
            p90 = nearest_rank(sorted(self.latencies), 0.9)
            parts.append((f" · {_ms(last)}", "red" if last > LATENCY_WARN_MS else "green"))
            parts.append((f" p90 {_ms(p90)}", "red" if p90 > LATENCY_WARN_MS else "dim"))
            parts.append((f" · {len(self.latencies)} turns", "dim"))
        if self.interruptions:
            parts.append((f" · {self.interruptions} ✂", "yellow"))
        return Text.assemble(*parts)


def _control_line(event: ControlRequested | ControlResult) -> Text:
    """`supervisor (their key's name) say: “…”`, then the outcome under it."""
    if isinstance(event, ControlResult):
        if event.ok:
            return Text("    ↳ done", style="magenta")
        return Text(f"    ↳ failed: {event.error or 'unknown'}", style="bold red")
    who = event.by.get("name") or event.by.get("key_id") or "?"
    args = event.args
    detail = {
        "say": f": “{_short(args.get('text', ''))}”" + (" (interrupting)" if args.get("interrupt") else ""),
        "instruct": f": “{_short(args.get('text', ''))}”",
        "transfer": f" → {_short(args.get('to', ''))}",
    }.get(event.action, "")
    if args.get("reason"):
        detail += f" ({_short(args['reason'])})"
    return Text.assemble(("  ⚑ supervisor ", "bold magenta"), (f"({who}) ", "magenta"), (event.action, "bold magenta"), detail)


@dataclass
class CallView:
    """What the view holds of one call."""

    call_id: str
    lines: deque[Text] = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    partials: dict[str, Text] = field(default_factory=dict)  # utterance (or speaker) → in progress
    agent_state: str | None = None
    ended: str | None = None
    last_activity: float = field(default_factory=time.monotonic)
    turns: TurnFigures = field(default_factory=TurnFigures)
    metadata: dict[str, Any] = field(default_factory=dict)  # the patches seen, merged

    def apply(self, event: Event) -> None:
        self.last_activity = time.monotonic()
        if (patch := metadata_of(event)) is not None:
            self.metadata = {k: v for k, v in {**self.metadata, **patch}.items() if v is not None}
        if isinstance(event, TranscriptPartial | TranscriptFinal):
            key = event.utterance_id or f"speaker:{event.speaker}"
            self.partials.pop(key, None)
            if isinstance(event, TranscriptPartial):
                self.partials[key] = Text.assemble(_speaker(event.speaker), (f"{event.text}…", "dim italic"))
                return
        if isinstance(event, AgentState):
            self.agent_state = event.state
            self.turns.apply(event)
        elif isinstance(event, CallEnded):
            self.ended, self.agent_state = event.status, None
            self.partials.clear()
        elif isinstance(event, Subscribed) and event.status == "ended" and self.ended is None:
            self.ended = "ended"
        if (line := describe(event)) is not None:
            self.lines.append(line)

    def panel(self, height: int) -> Panel:
        body = [*self.lines, *self.partials.values()][-max(1, height) :] or [Text("waiting…", style="dim")]
        for line in body:  # one row each, so the panels fit the height they were given
            line.no_wrap, line.overflow = True, "ellipsis"
        title = Text.assemble((self.call_id, "bold"), "  ", self._badge(), self.turns.badge())
        if self.metadata and (details := metadata_line(self.metadata)):
            title.append("  ")
            title.append_text(details)
        return Panel(Group(*body), title=title, title_align="left", border_style="dim" if self.ended else "blue")

    def _badge(self) -> Text:
        if self.ended:
            return Text(f"■ {self.ended}", style=END_STYLES.get(self.ended, "magenta"))
        state = self.agent_state or "live"
        return Text(f"● agent {state}" if self.agent_state else "● live", style=STATE_STYLES.get(state, "blue"))


class TailView:
    """Every call seen, rendered to fit the terminal: live calls first, most recent first."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client
        self.calls: dict[str, CallView] = {}
        self.notices: deque[Text] = deque(maxlen=3)

    def apply(self, event: Event) -> None:
        if not event.call_id or event.call_id == "*":
            if (line := describe(event)) is not None:
                self.notices.append(line)
            return
        view = self.calls.get(event.call_id)
        if view is None:
            view = self.calls[event.call_id] = CallView(event.call_id)
        view.apply(event)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or console.height
        yield self._header()
        yield from self.notices
        room = height - 1 - len(self.notices)
        ordered = sorted(self.calls.values(), key=lambda c: (c.ended is not None, -c.last_activity))
        shown = ordered[: max(1, room // 5)]
        if len(shown) < len(ordered):
            room -= 1
        per_call = max(1, room // max(1, len(shown)) - 2)  # two border lines per panel
        for view in shown:
            yield view.panel(per_call)
        if len(shown) < len(ordered):
            yield Text(f"… and {len(ordered) - len(shown)} more calls (widen the terminal)", style="dim")

    def _header(self) -> Text:
        live = sum(1 for c in self.calls.values() if not c.ended)
        link = "waiting for events"
        if self.client is not None:
            link = "connected" if self.client.connected else reconnecting_line(self.client)
        return Text.assemble(
            ("callstream tail", "bold"), f"  {live} live / {len(self.calls)} calls  ", (link, "dim")
        )


def reconnecting_line(client: Client) -> str:
    """`reconnecting… (why)`: what a tail that lost its server says."""
    why = client.down_reason
    return f"reconnecting… ({why})" if why else "reconnecting…"


async def report_link(client: Client, err: Console, every_s: float = 0.2) -> None:
    """Say on stderr why the server cannot be reached, once per reason, and when it is back: a
    tail whose output goes to a pipe shows no header, and would otherwise wait in silence."""
    said: str | None = None
    while True:
        why = None if client.connected else client.down_reason
        if why != said:
            if why is not None:
                err.print(reconnecting_line(client), highlight=False)
            elif said is not None:
                err.print("connected", highlight=False)
            said = why
        await asyncio.sleep(every_s)


class TailRefusedError(Exception):
    """The server refused every call the tail names (an invalid id, one the key may not see):
    nothing would ever come."""


async def _followed(client: Client, named: set[str]) -> AsyncIterator[Event]:
    """The client's events; ends the tail once the server has refused every named call (the last
    refusal is the command's error, not a line of its output)."""
    async for event in client.events():
        if isinstance(event, ErrorEvent) and event.code in REFUSALS and named:
            named.discard(event.call_id or "")
            if not named:
                raise TailRefusedError(f"{event.code}: {event.message}")
        yield event


async def follow_json(client: Client, call_ids: Iterable[str], out: BinaryIO, err: Console) -> None:
    """Print each call event as one JSON line, flushed, exactly as the server sent it."""
    async for event in _followed(client, set(call_ids)):
        if event.seq is not None:
            out.write(orjson.dumps(event.raw) + b"\n")
            out.flush()
        elif isinstance(event, ErrorEvent):
            err.print(f"[red]error:[/] {event.code}: {event.message}", highlight=False)


async def follow_live(client: Client, call_ids: Iterable[str], console: Console) -> None:
    """The rich live view, or plain lines when stdout is not a terminal."""
    view = TailView(client)
    if not console.is_terminal:
        async for event in _followed(client, set(call_ids)):
            if (line := describe(event)) is not None:
                console.print(Text.assemble((f"{event.call_id} ", "bold"), line), soft_wrap=True)
        return
    with Live(view, console=console, refresh_per_second=8, vertical_overflow="crop"):
        async for event in _followed(client, set(call_ids)):
            view.apply(event)


async def follow(url: str, key: str, call_ids: list[str], as_json: bool) -> None:
    """Named calls start from what the server holds of them (the call so far), then go live:
    ``tail call_42`` on a call in progress shows what was already said. ``*`` starts live."""
    err = Console(stderr=True, soft_wrap=True)
    named = [c for c in call_ids if c != "*"]
    async with Client(url, key) as client:
        for call_id in call_ids:
            await client.subscribe(call_id, since=None if call_id == "*" else 0)
        console = Console(soft_wrap=False)
        # The live view's header says why it reconnects; plain lines and JSON say it on stderr.
        reporter = None if console.is_terminal and not as_json else asyncio.create_task(report_link(client, err))
        try:
            if as_json:
                await follow_json(client, named, sys.stdout.buffer, err)
            else:
                await follow_live(client, named, console)
        finally:
            if reporter is not None:
                reporter.cancel()


def tail_command(url: str, key: str, call_ids: list[str], as_json: bool) -> None:
    """Run the tail until Ctrl-C (exit 0), a refused key (exit 1) or a closed pipe (exit 0)."""
    try:
        asyncio.run(follow(url, key, call_ids, as_json))
    except KeyboardInterrupt:
        return
    except (AuthError, TailRefusedError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(1) from None
    except BrokenPipeError:
        # `tail --json | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not complain, and exit quietly like other Unix tools.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
