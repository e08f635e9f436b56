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
each message's ``metrics`` (STT, EOU, LLM,  ``metrics`` per stage: ``stt`` and ``eou`` (the user's
TTS, end to end), with its                  transcription and end-of-turn delays, ``duration_ms``),
``conversation_item_added``                 ``llm`` and ``tts`` (``ttfb_ms``), ``e2e`` (``duration_ms``)
==========================================  ==========================================================

The per-turn figures come from ``ChatMessage.metrics``: LiveKit Agents 1.8 deprecates the
session's ``metrics_collected`` event in their favour (and logs a warning on every handler).

Live control (docs/control.md): ``attach(..., control=True)`` declares the actions below on the
adapter's own publisher (give ``url`` and ``key``), and a supervisor can then steer the session:

=========================  ========================================================================
``say``                    ``session.say(text)``: queued after what the agent is saying, or at once
                           after ``session.interrupt()`` when ``interrupt``
``instruct``               the agent's instructions get the text appended (``update_instructions``):
                           every later reply follows it
``pause`` / ``resume``     the agent is interrupted and its turn detection set to ``manual``: the
                           caller is still transcribed, the agent no longer answers; ``resume``
                           restores the session's turn detection
``transfer``               your ``transfer`` hook (:func:`sip_transfer` is one for LiveKit SIP), then
                           the session closes; the call ends ``transferred``. Without a hook
                           ``transfer`` is not declared.
``end``                    the session shuts down after what it is saying (``session.shutdown()``)
=========================  ========================================================================

``attach(..., metadata={...})`` publishes ``call.started`` with the call's metadata, the LiveKit
``room`` and caller ``participant`` identity filled in by default (:func:`room_metadata`).

Live audio (docs/protocol.md, Live audio), with ``attach(..., audio=True)``: the caller's audio on the
``caller`` track, taken from the session's audio input as the session reads it, and the agent's
speech on the ``agent`` track, taken from its audio output as the session hands it over for
playback (a TTS may deliver faster than real time; an interruption stops it). Both are tapped by
pass-through links put into the session's own I/O chains (``io.AudioInput`` ``source``,
``io.AudioOutput`` ``next_in_chain``, as LiveKit's own recorder does) once the session has
started, down-mixed to mono and resampled with ``rtc.AudioResampler`` to ``audio_sample_rate``
(16 kHz by default). The agent's speech is sent at the pace it plays, not as fast as the TTS
makes it, held while the playback is paused (LiveKit pauses it as the caller starts talking, until
the interruption is confirmed or found false), and what an interruption cuts off is not sent.

Tested with livekit-agents 1.8 (a real ``AgentSession`` run in-process with a scripted LLM; the
voice path with a scripted STT).
"""

from __future__ import annotations

import ast
import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from callstream.audio_send import FRAME_MS
from callstream.integrations import CallEvents, framework, parse_json_text
from callstream.integrations.controls import AgentControls, TransferHook

with framework("LiveKit", "livekit-agents", "livekit"):
    from livekit import rtc
    from livekit.agents import get_job_context, llm
    from livekit.agents.llm.chat_context import Instructions
    from livekit.agents.voice import io
    from livekit.agents.voice.events import (
        AgentStateChangedEvent,
        CloseEvent,
        CloseReason,
        ConversationItemAddedEvent,
        FunctionToolsExecutedEvent,
        ToolCallStarted,
        ToolExecutionUpdatedEvent,
        UserInputTranscribedEvent,
        UserStateChangedEvent,
    )

    from callstream.integrations.audio import DEFAULT_SAMPLE_RATE, audio_rate, mono_s16

if TYPE_CHECKING:
    from livekit.agents import AgentSession
    from livekit.agents.voice.turn import TurnDetectionMode

    from callstream.publisher import Publisher

__all__ = ["CallstreamSession", "SessionAudio", "room_metadata", "sip_transfer"]

MAX_LITERAL_CHARS = 65_536
HANDLERS = {
    "user_input_transcribed": "_on_user_input",
    "conversation_item_added": "_on_item",
    "agent_state_changed": "_on_state",
    "tool_execution_updated": "_on_tool_update",
    "function_tools_executed": "_on_tools_executed",
    "close": "_on_close",
    "user_state_changed": "_on_user_state",
}


def room_metadata(session: AgentSession[Any]) -> dict[str, str]:
    """The LiveKit ``room`` and the caller's ``participant`` identity, as far as they are known:
    from the session's room once it started (its linked participant), else from the worker's job
    (its room, and the participant it was dispatched for)."""
    found: dict[str, str] = {}
    room_io = getattr(session, "_room_io", None)  # `session.room_io` raises before start()
    if room_io is not None:
        found["room"] = room_io.room.name
        if (linked := room_io.linked_participant) is not None:
            found["participant"] = linked.identity
    elif (ctx := get_job_context(required=False)) is not None:
        found["room"] = ctx.job.room.name
        if ctx.job.HasField("participant"):
            found["participant"] = ctx.job.participant.identity
    return {key: value for key, value in found.items() if value}


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


def sip_transfer(
    room_name: str, participant_identity: str, *, api: Any = None, play_dialtone: bool = False
) -> TransferHook:
    """A ``transfer`` hook for a phone call in LiveKit: LiveKit's SIP transfer (a SIP REFER) hands
    the caller (SIP participant ``participant_identity`` of ``room_name``) to the target.

    Needs ``livekit-api`` (``pip install livekit-api``). ``api`` is a ``livekit.api.LiveKitAPI``;
    without one, each transfer makes its own from ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and
    ``LIVEKIT_API_SECRET``. An E.164 target becomes a ``tel:`` URI. The hook returns once LiveKit
    reports the transfer successful and raises otherwise (the call then goes on).
    """
    try:
        from livekit import api as lkapi
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("sip_transfer needs livekit-api: pip install livekit-api") from exc

    async def transfer(to: str, reason: str | None) -> None:
        del reason  # a SIP REFER has no place for it; it is in the call's history
        request = lkapi.TransferSIPParticipantRequest(
            room_name=room_name,
            participant_identity=participant_identity,
            transfer_to=f"tel:{to}" if to.startswith("+") else to,
            play_dialtone=play_dialtone,
        )
        client = api if api is not None else lkapi.LiveKitAPI()
        try:
            response = await client.sip.transfer_sip_participant(request)
        finally:
            if api is None:
                await client.aclose()
        if response.status != lkapi.STS_TRANSFER_SUCCESSFUL:
            outcome = lkapi.SIPTransferReason.Name(response.reason)
            raise RuntimeError(f"the SIP transfer did not complete ({outcome})")

    return transfer


class SessionAudio:
    """The session's audio on callstream's tracks: mono, resampled to ``sample_rate``.

    :meth:`install` links a tap into the session's audio input and output; the links pass every
    frame on untouched (and stop sending once the call ended), so the session runs as without.
    """

    def __init__(self, calls: CallEvents, sample_rate: int) -> None:
        self.calls = calls
        self.sample_rate = sample_rate
        self._resamplers: dict[tuple[str, int], rtc.AudioResampler] = {}  # one stream per track and rate
        self._agent = _Pacer(lambda pcm: calls.audio("agent", pcm, sample_rate), sample_rate)

    def install(self, session: AgentSession[Any]) -> None:
        """Tap the session's current audio input and output, unless they are tapped already."""
        source = session.input.audio
        if source is not None and not _tapped(source):
            session.input.audio = _TapInput(source, self)
        sink = session.output.audio
        if sink is not None and not _tapped(sink):
            session.output.audio = _TapOutput(sink, self)

    def send(self, track: str, frame: rtc.AudioFrame) -> None:
        if self.calls.ended:
            return
        pcm = mono_s16(bytes(frame.data), frame.num_channels)
        if frame.sample_rate != self.sample_rate:
            key = (track, frame.sample_rate)
            if (resampler := self._resamplers.get(key)) is None:
                resampler = self._resamplers[key] = rtc.AudioResampler(frame.sample_rate, self.sample_rate)
            pcm = b"".join(bytes(out.data) for out in resampler.push(bytearray(pcm)))
        if track == "agent":
            self._agent.push(pcm)
        else:
            self.calls.audio(track, pcm, self.sample_rate)

    def paused(self, paused: bool) -> None:
        """The agent's playback was paused (the caller talks over it) or goes on again."""
        if paused:
            self._agent.pause()
        else:
            self._agent.resume()

    def interrupted(self) -> None:
        """The agent's playback was cut off: what it had not played yet is not sent."""
        self._agent.clear()

    def close(self) -> None:
        """The call is over: nothing more is sent."""
        self._agent.close()


class _Pacer:
    """Mono 16-bit audio handed to ``send`` at the pace it plays, in frames of ``FRAME_MS``.

    The session hands the agent's speech to its output as fast as the TTS makes it, and LiveKit's
    room output queues it for playback; a listener plays audio as it arrives (docs/protocol.md:
    a producer sends audio as it is heard), so a burst would overflow its jitter buffer and most
    of the utterance would be lost. While the playback is paused nothing is sent either.
    """

    def __init__(self, send: Callable[[bytes], None], sample_rate: int) -> None:
        self._send = send
        self._bytes_per_s = 2 * sample_rate
        self._step = FRAME_MS * self._bytes_per_s // 1000
        self._queued: deque[bytes] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False

    def push(self, pcm: bytes) -> None:
        """Queue ``pcm`` behind what is still to play; a closed pacer drops it."""
        if self._closed:
            return
        self._queued.extend(pcm[i : i + self._step] for i in range(0, len(pcm), self._step))
        self._start()

    def clear(self) -> None:
        self._queued.clear()

    def pause(self) -> None:
        """The playback holds where it is: what is queued waits for :meth:`resume`."""
        self._paused = True
        self._stop()

    def resume(self) -> None:
        """The playback goes on: pacing starts afresh from now, not from before the pause."""
        self._paused = False
        self._start()

    def close(self) -> None:
        """Nothing more is sent, though the tap stays in the session's output chain."""
        self._closed = True
        self.clear()
        self._stop()

    def _start(self) -> None:
        if self._queued and not self._paused and not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        """Send a frame, wait for it to play, until nothing is queued: never more than a frame
        ahead of the playback, however early the next utterance comes."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self._queued:
            chunk = self._queued.popleft()
            self._send(chunk)
            due += len(chunk) / self._bytes_per_s
            await asyncio.sleep(max(due - loop.time(), 0))


def _tapped(link: io.AudioInput | io.AudioOutput | None) -> bool:
    """Whether a chain (an input's sources, an output's next links) holds a tap already."""
    while link is not None:
        if isinstance(link, _TapInput | _TapOutput):
            return True
        link = link.source if isinstance(link, io.AudioInput) else link.next_in_chain
    return False


class _TapInput(io.AudioInput):
    """The caller's audio, as the session reads it from its input."""

    def __init__(self, source: io.AudioInput, audio: SessionAudio) -> None:
        super().__init__(label="callstream", source=source)
        self._audio = audio

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await super().__anext__()
        self._audio.send("caller", frame)
        return frame


class _TapOutput(io.AudioOutput):
    """The agent's speech, as the session hands it to its output for playback."""

    def __init__(self, sink: io.AudioOutput, audio: SessionAudio) -> None:
        super().__init__(label="callstream", next_in_chain=sink, capabilities=io.AudioOutputCapabilities(pause=True))
        self._audio = audio

    @property
    def sample_rate(self) -> int | None:
        return self.next_in_chain.sample_rate if self.next_in_chain is not None else None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self.next_in_chain is not None:
            await self.next_in_chain.capture_frame(frame)
        await super().capture_frame(frame)
        self._audio.send("agent", frame)

    def flush(self) -> None:
        super().flush()
        if self.next_in_chain is not None:
            self.next_in_chain.flush()

    def clear_buffer(self) -> None:
        if self.next_in_chain is not None:
            self.next_in_chain.clear_buffer()
        self._audio.interrupted()

    def pause(self) -> None:
        """LiveKit pauses the playback as the caller starts talking, and clears it only once the
        interruption is confirmed: the agent track holds still meanwhile."""
        super().pause()
        self._audio.paused(True)

    def resume(self) -> None:
        super().resume()
        self._audio.paused(False)


class CallstreamSession(AgentControls):
    """Publishes one LiveKit ``AgentSession`` as one callstream call.

    Make it with :meth:`attach` (before ``session.start()``). Give either a started
    :class:`~callstream.Publisher` (shared by the calls of a worker) or ``url`` and ``key``
    (a publisher of its own, closed when the session closes).
    """

    events: CallEvents

    def __init__(
        self, session: AgentSession[Any], calls: CallEvents | None = None, *, transfer: TransferHook | None = None
    ) -> None:
        self.session = session
        if calls is not None:
            self.events = calls
        self.transfer_hook = transfer
        self.paused = False
        self._resume_to: TurnDetectionMode | None = None  # the turn detection a resume restores
        self._user_transcribed = False  # a final transcript came since the last user message
        self._announced: set[str] = set()  # tool call ids already published as function.call
        self._closing: asyncio.Task[None] | None = None
        self._handlers: list[tuple[str, Any]] = []
        self._metadata: dict[str, Any] = {}  # what the call's metadata holds from this adapter
        self.audio: SessionAudio | None = None

    @classmethod
    async def attach(
        cls,
        session: AgentSession[Any],
        call_id: str,
        *,
        publisher: Publisher | None = None,
        url: str | None = None,
        key: str | None = None,
        control: bool = False,
        transfer: TransferHook | None = None,
        metadata: Mapping[str, Any] | None = None,
        audio: bool = False,
        audio_sample_rate: int = DEFAULT_SAMPLE_RATE,
    ) -> CallstreamSession | None:
        """Start publishing ``session`` as ``call_id``; None (logged) if the key is refused.

        A refused key must not keep the agent from taking the call, so it is not raised.
        ``control=True`` lets a supervisor steer the session through the adapter's own publisher
        (``url`` and ``key``); ``transfer`` (``await transfer(to, reason)``) adds transfers. A
        shared ``publisher`` declares what its program gave it: route its requests to
        :meth:`handle`. ``metadata`` (agent, from, to, campaign, customer, …) is published with
        ``call.started``, with the LiveKit ``room`` and caller ``participant`` filled in by default
        (:func:`room_metadata`; what ``metadata`` gives wins), the participant as soon as it joins.
        ``audio=True`` streams the session's live audio too (:class:`SessionAudio`), at
        ``audio_sample_rate`` Hz, from when the session has started.
        """
        if control and publisher is not None:
            raise ValueError("control=True needs the adapter's own publisher: give url and key")
        rate = audio_rate(audio, audio_sample_rate)
        bridge = cls(session, transfer=transfer)
        controls = bridge.handlers if control else None
        calls = await CallEvents.open(call_id, publisher=publisher, url=url, key=key, controls=controls)
        if calls is None:
            return None
        bridge.events = calls
        if rate is not None:
            bridge.audio = SessionAudio(calls, rate)
            if getattr(session, "_started", False):  # attached late: the I/O is in place already
                bridge.audio.install(session)
        bridge._metadata = {**room_metadata(session), **(metadata or {})}
        if bridge._metadata:
            calls.start(bridge._metadata)
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
        if self.audio is not None:
            self.audio.close()
        if self._closing is None:
            self._closing = asyncio.create_task(self.events.aclose())
        await self._closing

    # -- live control: a supervisor's requests → the session ----------------------------------

    async def _say(self, text: str, *, interrupt: bool) -> None:
        if interrupt:
            await self._interrupt()
        self.session.say(text)

    async def _instruct(self, text: str) -> None:
        """Append ``text`` to the current agent's instructions (plain or sectioned)."""
        agent = self.session.current_agent
        current = agent.instructions
        if isinstance(current, Instructions):
            updated: Any = Instructions(
                f"{current.common}\n\n{text}".strip(), audio=current.audio, text=current.text, dynamic=current.dynamic
            )
        else:
            updated = f"{current}\n\n{text}".strip()
        await agent.update_instructions(updated)

    async def _pause(self) -> None:
        if not self.paused:
            self._resume_to, self.paused = self.session.turn_detection, True
        self.session.update_options(turn_detection="manual")
        await self._interrupt()

    async def _resume(self) -> None:
        if self.paused:
            self.session.update_options(turn_detection=self._resume_to)
        self.paused = False

    async def _end(self, reason: str) -> None:
        """Close the session after what it is saying."""
        self.session.shutdown(drain=True)

    async def _interrupt(self) -> None:
        """Stop what the agent is saying now, even speech its program made uninterruptible."""
        await self.session.interrupt(force=True)

    # -- session events → callstream events ---------------------------------------------------

    def _fill_in(self) -> None:
        """The room or participant learnt since the call started rides on the next event."""
        found = {k: v for k, v in room_metadata(self.session).items() if k not in self._metadata}
        if found:
            self._metadata.update(found)
            self.events.set_metadata(found)

    def _on_user_input(self, ev: UserInputTranscribedEvent) -> None:
        self._fill_in()
        self._user_transcribed = self._user_transcribed or ev.is_final
        extra = {"speaker_id": ev.speaker_id, "language": ev.language}
        self.events.speech("user", ev.transcript, final=ev.is_final, **extra)

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if isinstance(item, llm.ChatMessage):
            self._item_metrics(item)
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
        if self.audio is not None and ev.old_state == "initializing":
            # start() set the session's I/O up (its room's, a recorder's) and announces itself
            # with this change before the session reads any audio: the taps go in now
            self.audio.install(self.session)
        self._fill_in()
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

    def _item_metrics(self, item: llm.ChatMessage) -> None:
        """The turn's figures LiveKit keeps on each message (``ChatMessage.metrics``, seconds) as
        ``metrics`` events in ms: the user's STT and end-of-utterance delays, the agent's LLM and
        TTS time to first byte and its end-to-end latency."""
        m, ms = item.metrics, 1000.0

        def seconds(name: str) -> float | None:
            value = m.get(name)
            return value * ms if isinstance(value, int | float) and not isinstance(value, bool) else None

        def model(name: str) -> str | None:
            found = m.get(name) or {}
            return found.get("model_name") if isinstance(found, dict) else None

        stages: dict[str, list[tuple[str, dict[str, Any]]]] = {
            "user": [("stt", {"duration_ms": seconds("transcription_delay"), "model": model("stt_metadata")}),
                     ("eou", {"duration_ms": seconds("end_of_turn_delay"),
                              "callback_ms": seconds("on_user_turn_completed_delay")})],
            "assistant": [("llm", {"ttfb_ms": seconds("llm_node_ttft"), "model": model("llm_metadata")}),
                          ("tts", {"ttfb_ms": seconds("tts_node_ttfb"), "model": model("tts_metadata")}),
                          ("e2e", {"duration_ms": seconds("e2e_latency")})],
        }  # fmt: skip
        for stage, figures in stages.get(item.role, []):
            if figures.get("ttfb_ms") is not None or figures.get("duration_ms") is not None:
                self.events.metrics(stage, **figures)

    def _on_close(self, ev: CloseEvent) -> None:
        failed = ev.error is not None or ev.reason == CloseReason.ERROR
        reason = ev.reason.value if isinstance(ev.reason, CloseReason) else str(ev.reason)
        if ev.error is not None:
            reason = f"{reason}: {getattr(ev.error, 'error', ev.error)!r}"
        status = "failed" if failed else "completed"
        if self.ending is not None and not failed:
            status, reason = self.ending
        self.events.end(status, reason)
        self.detach()
        if self.audio is not None:
            self.audio.close()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.events.aclose())
