"""LiveKit Agents → callstream: publish an ``AgentSession``'s conversation as live call events.

Attach before ``session.start()`` and every dashboard subscribed to the call sees it::

    from callstream.integrations.livekit import CallstreamSession

    session = AgentSession(stt=..., llm=..., tts=..., vad=...)
    await CallstreamSession.attach(session, ctx.room.name, url=CALLSTREAM_URL, key=CALLSTREAM_KEY)
    await session.start(agent=MyAgent(), room=ctx.room)

It listens to the session's own events (its ``EventEmitter``), so it needs no change to the
agent, and the handlers only queue events (``Publisher.send``), so they never block the session:

==========================================  ==========================================================
``user_input_transcribed`` (interim/final)  ``transcript.partial`` / ``transcript.final`` (user; the
                                            interims and their final share an ``utterance_id``)
``conversation_item_added``                 ``transcript.final`` of the agent (``interrupted`` when it
                                            was cut off); a user message that no transcription
                                            announced (text input) is published as the user's final
``agent_state_changed``                     ``agent.state`` (listening, thinking, speaking; LiveKit's
                                            ``initializing`` and ``idle`` have no callstream state)
``tool_execution_updated`` (call started)   ``function.call`` as the tool starts (``tool_call_id``)
``function_tools_executed``                 ``function.result`` (``is_error``), and ``function.call``
                                            for any call not announced yet
``close``                                   ``call.ended``: ``failed`` on an error, else ``completed``;
                                            ``reason`` is LiveKit's close reason
``user_state_changed`` to speaking while    first a user ``transcript.partial`` "…" (replaced by the
the agent speaks                            words): the server counts the interruption
``metrics_collected`` (STT, LLM, TTS, EOU)  ``metrics``: ``stage`` ``stt``, ``llm``, ``tts`` or
                                            ``eou``, ``ttfb_ms``, ``duration_ms`` and the stage's
                                            own figures (tokens, audio, delays) in ms
==========================================  ==========================================================

Tested with livekit-agents 1.8 (a real ``AgentSession`` run in-process with a scripted LLM).
"""

from __future__ import annotations

import ast
import asyncio
from typing import TYPE_CHECKING, Any

from callstream.integrations import CallEvents, framework, parse_json_text

with framework("LiveKit", "livekit-agents", "livekit"):
    from livekit.agents import llm
    from livekit.agents.metrics import EOUMetrics, LLMMetrics, STTMetrics, TTSMetrics
    from livekit.agents.voice.events import (
        AgentStateChangedEvent,
        CloseEvent,
        CloseReason,
        ConversationItemAddedEvent,
        FunctionToolsExecutedEvent,
        MetricsCollectedEvent,
        ToolCallStarted,
        ToolExecutionUpdatedEvent,
        UserInputTranscribedEvent,
        UserStateChangedEvent,
    )

if TYPE_CHECKING:
    from livekit.agents import AgentSession

    from callstream.publisher import Publisher

__all__ = ["CallstreamSession"]

MAX_LITERAL_CHARS = 65_536
HANDLERS = {
    "user_input_transcribed": "_on_user_input",
    "conversation_item_added": "_on_item",
    "agent_state_changed": "_on_state",
    "tool_execution_updated": "_on_tool_update",
    "function_tools_executed": "_on_tools_executed",
    "close": "_on_close",
    "user_state_changed": "_on_user_state",
    "metrics_collected": "_on_metrics",
}


def tool_output(text: str) -> Any:
    """A tool's output as data: LiveKit hands it over as ``str(result)``, often a dict's repr.

    JSON first, then Python literals (``ast.literal_eval`` evaluates literals only, nothing
    else), else the text itself.
    """
    value = parse_json_text(text)
    if value is not text or len(text) > MAX_LITERAL_CHARS:
        return value
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


class CallstreamSession:
    """Publishes one LiveKit ``AgentSession`` as one callstream call.

    Make it with :meth:`attach` (before ``session.start()``). Give either a started
    :class:`~callstream.Publisher` (shared by the calls of a worker) or ``url`` and ``key``
    (a publisher of its own, closed when the session closes).
    """

    def __init__(self, session: AgentSession[Any], calls: CallEvents) -> None:
        self.session = session
        self.events = calls
        self._user_transcribed = False  # a final transcript came since the last user message
        self._announced: set[str] = set()  # tool call ids already published as function.call
        self._closing: asyncio.Task[None] | None = None
        self._handlers: list[tuple[str, Any]] = []

    @classmethod
    async def attach(
        cls,
        session: AgentSession[Any],
        call_id: str,
        *,
        publisher: Publisher | None = None,
        url: str | None = None,
        key: str | None = None,
    ) -> CallstreamSession | None:
        """Start publishing ``session`` as ``call_id``; None (logged) if the key is refused.

        A refused key must not keep the agent from taking the call, so it is not raised.
        """
        calls = await CallEvents.open(call_id, publisher=publisher, url=url, key=key)
        if calls is None:
            return None
        bridge = cls(session, calls)
        for event, method in HANDLERS.items():
            handler = getattr(bridge, method)
            session.on(event, handler)  # type: ignore[arg-type,unused-ignore]
            bridge._handlers.append((event, handler))
        return bridge

    def detach(self) -> None:
        """Stop listening to the session (publishes nothing more)."""
        for event, handler in self._handlers:
            self.session.off(event, handler)  # type: ignore[arg-type,unused-ignore]
        self._handlers.clear()

    async def wait_closed(self) -> None:
        """Wait until the session closed and its events are stored (owned publisher closed)."""
        if self._closing is not None:
            await self._closing

    async def aclose(self, status: str = "completed", reason: str | None = None) -> None:
        """End the call now if the session did not (``call.ended``), flush, and detach."""
        self.events.end(status, reason)
        self.detach()
        if self._closing is None:
            self._closing = asyncio.create_task(self.events.aclose())
        await self._closing

    # -- session events → callstream events ---------------------------------------------------

    def _on_user_input(self, ev: UserInputTranscribedEvent) -> None:
        self._user_transcribed = self._user_transcribed or ev.is_final
        extra = {"speaker_id": ev.speaker_id, "language": ev.language}
        self.events.speech("user", ev.transcript, final=ev.is_final, **extra)

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage) or not item.text_content:
            return
        if item.role == "assistant":
            extra = {"interrupted": True} if item.interrupted else {}
            self.events.speech("agent", item.text_content, final=True, **extra)
        elif item.role == "user":
            if not self._user_transcribed:  # typed input, or an STT that sent no final
                self.events.speech("user", item.text_content, final=True)
            self._user_transcribed = False

    def _on_state(self, ev: AgentStateChangedEvent) -> None:
        self.events.state(ev.new_state)

    def _on_tool_update(self, ev: ToolExecutionUpdatedEvent) -> None:
        if isinstance(ev.update, ToolCallStarted):
            self._announce(ev.update.function_call)

    def _on_tools_executed(self, ev: FunctionToolsExecutedEvent) -> None:
        for call, output in ev.zipped():
            self._announce(call)
            extra = {"is_error": True} if output.is_error else {}
            self.events.function_result(call.name, tool_output(output.output), call.call_id, **extra)

    def _announce(self, call: llm.FunctionCall) -> None:
        if call.call_id not in self._announced:
            self._announced.add(call.call_id)
            self.events.function_call(call.name, parse_json_text(call.arguments), call.call_id)

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            self.events.speaking_over()

    def _on_metrics(self, ev: MetricsCollectedEvent) -> None:
        """STT, LLM, TTS and end-of-utterance figures as `metrics` events (seconds → ms)."""
        m, ms = ev.metrics, 1000.0
        metadata = getattr(m, "metadata", None)
        model = metadata.model_name if metadata is not None else None
        if isinstance(m, LLMMetrics):
            self.events.metrics("llm", ttfb_ms=m.ttft * ms, duration_ms=m.duration * ms, label=m.label, model=model,
                                prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens)  # fmt: skip
        elif isinstance(m, STTMetrics):
            self.events.metrics("stt", duration_ms=m.duration * ms, audio_ms=m.audio_duration * ms, label=m.label,
                                model=model, streamed=m.streamed)  # fmt: skip
        elif isinstance(m, TTSMetrics):
            self.events.metrics("tts", ttfb_ms=m.ttfb * ms, duration_ms=m.duration * ms,
                                audio_ms=m.audio_duration * ms, label=m.label, model=model)  # fmt: skip
        elif isinstance(m, EOUMetrics):
            self.events.metrics("eou", duration_ms=m.end_of_utterance_delay * ms,
                                transcription_delay_ms=m.transcription_delay * ms)  # fmt: skip

    def _on_close(self, ev: CloseEvent) -> None:
        failed = ev.error is not None or ev.reason == CloseReason.ERROR
        reason = ev.reason.value if isinstance(ev.reason, CloseReason) else str(ev.reason)
        if ev.error is not None:
            reason = f"{reason}: {getattr(ev.error, 'error', ev.error)!r}"
        self.events.end("failed" if failed else "completed", reason)
        self.detach()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.events.aclose())
