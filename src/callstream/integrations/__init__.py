"""Adapters from voice-agent frameworks to callstream events.

- :mod:`callstream.integrations.pipecat`: ``CallstreamObserver`` for a Pipecat pipeline
  (``pip install 'callstream[pipecat]'``).
- :mod:`callstream.integrations.livekit`: ``CallstreamSession`` for a LiveKit Agents
  ``AgentSession`` (``pip install 'callstream[livekit]'``).

Importing ``callstream`` never imports a framework: each adapter module imports its framework
when it is imported itself. What the adapters share lives here, framework-free: :class:`CallEvents`
turns "the user said", "the agent is thinking", "a tool returned" into the events of one call
and hands them to a :class:`~callstream.Publisher`; :mod:`callstream.integrations.controls` has
what they share to carry out a supervisor's requests. An adapter for another framework can use
them the same way.

A monitoring feed must never take a live call down: every failure here (server unreachable,
event refused, buffer full) is logged and counted, never raised into the framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson

from callstream.control import ControlHandler
from callstream.errors import PublishError
from callstream.publisher import Publisher

__all__ = ["CallEvents", "framework", "jsonable", "require_target"]

logger = logging.getLogger("callstream.integrations")

AGENT_STATES: Final = frozenset({"listening", "thinking", "speaking"})
MAX_STAGE_CHARS: Final = 64
USER_SPEAKING: Final = "…"  # the text of a user partial before any word was recognised
NO_TARGET: Final = "give a started Publisher, or url and key"
CONNECT_WITHIN: Final = 1.0  # s a call's start waits for the server's first answer (a refused key)


@contextlib.contextmanager
def framework(name: str, package: str, extra: str) -> Iterator[None]:
    """Wrap an adapter's framework imports: a missing framework says what to install."""
    try:
        yield
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = f"the {name} integration needs {package}: pip install 'callstream[{extra}]'"
        raise ImportError(msg) from exc


def require_target(publisher: Publisher | None, url: str | None, key: str | None) -> None:
    """Refuse an adapter given neither a publisher nor a server to publish to (a ValueError)."""
    if publisher is None and (url is None or key is None):
        raise ValueError(NO_TARGET)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: tool arguments and results are whatever a framework holds.

    Pydantic models are dumped, anything else orjson cannot encode becomes its ``str()``, so a
    tool returning a custom object still shows up instead of failing the event.
    """

    def fallback(obj: Any) -> Any:
        dump = getattr(obj, "model_dump", None)
        return dump(mode="json") if callable(dump) else str(obj)

    try:
        return orjson.loads(orjson.dumps(value, default=fallback, option=orjson.OPT_NON_STR_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return str(value)


def parse_json_text(text: str) -> Any:
    """Tool arguments often arrive as a JSON string: decode it, or keep the string."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class CallEvents:
    """The events of one call, published in order through a :class:`~callstream.Publisher`.

    Keeps the little state every adapter needs: when the call started (for ``duration_ms``),
    the last agent state (only changes are published), each speaker's open utterance (its
    partials and their final share one ``utterance_id``), and whether the call has ended
    (nothing is published after ``call.ended``).
    """

    def __init__(self, publisher: Publisher, call_id: str, *, owns_publisher: bool = False) -> None:
        self.publisher = publisher
        self.call_id = call_id
        self.owns_publisher = owns_publisher
        self.started = time.monotonic()
        self.agent_state: str | None = None
        self.ended = False
        self.published = 0
        self.dropped = 0
        self.refused = 0
        self.audio_dropped = 0  # chunks of audio the publisher did not take
        self._utterances: dict[str, int] = {}
        self._open: dict[str, str] = {}  # speaker → the utterance id its partials so far carry
        self._metadata: dict[str, Any] = {}  # a patch for the next event (`set_metadata`)

    @classmethod
    async def connect(
        cls, url: str, key: str, call_id: str, controls: Mapping[str, ControlHandler] | None = None
    ) -> CallEvents | None:
        """A :class:`CallEvents` with a publisher of its own, or None if the key is refused.

        ``controls`` are the live-control handlers the publisher declares and runs for the call.
        An unreachable server is not an error: the publisher buffers and retries. A server slow
        to answer is not waited for past :data:`CONNECT_WITHIN` (the agent's start waits on this,
        and the caller would hear the wait): the publisher goes on connecting in the background,
        and a key refused then fails the events instead (logged, counted).
        """
        publisher = Publisher(url, key, controls=controls)
        try:
            await asyncio.wait_for(publisher.start(), CONNECT_WITHIN)  # the connection loop outlives it
        except TimeoutError:
            logger.warning("callstream: the server has not answered yet; call %s is published once it does", call_id)
        except PublishError as exc:
            logger.error("callstream: not publishing call %s: %s", call_id, exc)
            await publisher.close()
            return None
        return cls(publisher, call_id, owns_publisher=True)

    @classmethod
    async def open(
        cls,
        call_id: str,
        *,
        publisher: Publisher | None = None,
        url: str | None = None,
        key: str | None = None,
        controls: Mapping[str, ControlHandler] | None = None,
    ) -> CallEvents | None:
        """The call's events through a shared ``publisher``, or one of their own for ``url`` and ``key``
        (declaring ``controls``: a shared publisher declares what its program gave it).

        None (logged) when that key is refused: see :meth:`connect`.
        """
        if publisher is not None:
            return cls(publisher, call_id)
        if url is None or key is None:
            raise ValueError(NO_TARGET)
        return await cls.connect(url, key, call_id, controls)

    # -- what a call is made of ----------------------------------------------------------------

    def start(self, metadata: Mapping[str, Any] | None = None) -> None:
        """``call.started``, with the call's metadata (agent, from, to, direction, campaign,
        customer, or the program's own keys: strings, numbers, booleans) and any patch
        :meth:`set_metadata` left for the next event."""
        self._metadata.update(metadata or {})
        self.emit("call.started", {})

    def set_metadata(self, patch: Mapping[str, Any]) -> None:
        """Merge ``patch`` into the call's metadata (None removes a key): it rides on the next
        event published (``data.metadata``), so it costs no event of its own."""
        self._metadata.update(patch)

    def next_utterance(self, speaker: str) -> str:
        """A fresh utterance id for ``speaker`` (``user-1``, ``agent-3``, …)."""
        self._utterances[speaker] = self._utterances.get(speaker, 0) + 1
        return f"{speaker}-{self._utterances[speaker]}"

    def speech(self, speaker: str, text: str, *, final: bool, **extra: Any) -> None:
        """A transcript of ``speaker``'s open utterance: partials share its id, a final closes it."""
        utterance = self._open.pop(speaker, None) or self.next_utterance(speaker)
        if not final:
            self._open[speaker] = utterance
        self.transcript(speaker, text, final=final, utterance_id=utterance, **extra)

    def transcript(self, speaker: str, text: str, *, final: bool, utterance_id: str, **extra: Any) -> None:
        """A partial or final transcript; empty text is not an utterance and is skipped."""
        if not text.strip():
            return
        data = {"speaker": speaker, "text": text, "utterance_id": utterance_id}
        data.update({k: jsonable(v) for k, v in extra.items() if v is not None})
        self.emit("transcript.final" if final else "transcript.partial", data)

    def state(self, state: str) -> None:
        """``agent.state``, published only when it changes (and only the contract's states)."""
        if state in AGENT_STATES and state != self.agent_state and not self.ended:
            self.agent_state = state
            self.emit("agent.state", {"state": state})

    def function_call(self, name: str, args: Any, tool_call_id: str | None, **extra: Any) -> None:
        data = {"name": name, "args": jsonable(args if args is not None else {}), **extra}
        if tool_call_id:
            data["tool_call_id"] = tool_call_id
        self.emit("function.call", data)

    def function_result(self, name: str, result: Any, tool_call_id: str | None, **extra: Any) -> None:
        data = {"name": name, "result": jsonable(result), **{k: v for k, v in extra.items() if v is not None}}
        if tool_call_id:
            data["tool_call_id"] = tool_call_id
        self.emit("function.result", data)

    def metrics(self, stage: str, **figures: Any) -> None:
        """A ``metrics`` event: the framework's own figures for one stage; times in ms (rounded
        to 0.1), what is None or negative (a framework's "unknown") left out."""
        data: dict[str, Any] = {"stage": stage[:MAX_STAGE_CHARS] or "pipeline"}
        for name, value in figures.items():
            if isinstance(value, float):
                value = round(value, 1)
            if value is not None and not (isinstance(value, int | float) and value < 0):
                data[name] = jsonable(value)
        self.emit("metrics", data)

    def speaking_over(self) -> None:
        """The user started speaking while the agent speaks, before any word was recognised: a
        placeholder partial of the user's (its words replace it), published before the agent's
        state changes so that the server counts the interruption (docs/quality.md)."""
        if self.agent_state == "speaking":
            self.speech("user", USER_SPEAKING, final=False)

    def end(self, status: str, reason: str | None = None) -> None:
        """``call.ended`` with the time since this object was made; only the first call counts."""
        if self.ended:
            return
        data: dict[str, Any] = {"status": status, "duration_ms": int((time.monotonic() - self.started) * 1000)}
        if reason:
            data["reason"] = reason[:500]
        self.emit("call.ended", data)
        self.ended = True

    def audio(self, track: str, pcm: bytes, sample_rate: int) -> None:
        """Stream a chunk of the call's mono 16-bit audio on ``track`` (``caller`` or ``agent``);
        never raises: a chunk the publisher drops (disconnected) or refuses is counted, and the
        first refusal logged."""
        if self.ended or not pcm:
            return
        try:
            if self.publisher.send_audio(self.call_id, track, pcm, sample_rate=sample_rate):
                return
        except (PublishError, ValueError) as exc:
            if not self.audio_dropped:
                logger.warning("callstream: audio of call %s not sent: %s", self.call_id, exc)
        self.audio_dropped += 1

    # -- publishing --------------------------------------------------------------------------------

    def emit(self, type: str, data: dict[str, Any]) -> None:
        """Queue one event now (framework callbacks are often synchronous); never raises."""
        if self.ended:
            return
        if self._metadata:
            data = {**data, "metadata": {k: jsonable(v) for k, v in self._metadata.items()}}
            self._metadata = {}
        try:
            future = self.publisher.send(self.call_id, type, data)
        except PublishError as exc:
            self.dropped += 1
            logger.warning("callstream: dropped a %s event of call %s: %s", type, self.call_id, exc)
            return
        self.published += 1
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[int | None]) -> None:
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:
            self.refused += 1
            logger.warning("callstream: an event of call %s was not stored: %s", self.call_id, exc)

    async def aclose(self, flush_within: float = 5.0) -> None:
        """Wait (up to ``flush_within`` s) for what was sent to be stored; close an owned publisher."""
        try:
            await asyncio.wait_for(self.publisher.flush(), flush_within)
        except (TimeoutError, PublishError) as exc:
            logger.warning("callstream: call %s closed with events unconfirmed: %r", self.call_id, exc)
        if self.owns_publisher:
            await self.publisher.close()
