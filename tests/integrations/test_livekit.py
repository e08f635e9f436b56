"""A real LiveKit Agents `AgentSession`, publishing through CallstreamSession to a real server.

No LiveKit server is needed for what is tested here: the session runs in-process in text mode
with a scripted LLM (a real `llm.LLM` subclass streaming fixed chunks, including a tool call
that runs a real `@function_tool`), and the voice-only events (interim transcripts) are emitted
through the session's own EventEmitter with the package's event classes. The SIP transfer hook is
checked against a stand-in LiveKit server speaking the real Twirp protocol.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from livekit import api as lkapi
from livekit.agents import Agent, AgentSession, function_tool, llm
from livekit.agents.llm import ChatChunk, ChoiceDelta, FunctionToolCall
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    CloseReason,
    ConversationItemAddedEvent,
    UserInputTranscribedEvent,
    UserStateChangedEvent,
)

from callstream import Publisher
from callstream.integrations.livekit import CallstreamSession, sip_transfer, tool_output
from tests.helpers import ServerProcess, recv_until
from tests.integrations.events import brief, subscribed


class ScriptedStream(llm.LLMStream):
    def __init__(self, model: ScriptedLLM, chunks: list[ChatChunk], **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._chunks = chunks

    async def _run(self) -> None:
        for chunk in self._chunks:
            self._event_ch.send_nowait(chunk)


class ScriptedLLM(llm.LLM):
    """Answers each turn with the next scripted list of chunks: no model, no network."""

    def __init__(self, replies: list[list[ChatChunk]]) -> None:
        super().__init__()
        self._replies = replies

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> ScriptedStream:
        return ScriptedStream(self, self._replies.pop(0), chat_ctx=chat_ctx, tools=tools or [],
                              conn_options=conn_options)


@function_tool
async def check_availability(party: int) -> dict[str, Any]:
    """Free tables for a party of this size."""
    return {"free": ["20:00"], "party": party}


async def test_a_running_agent_session_arrives_as_callstream_events_in_order(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    ws = await subscribed(server, api_key, call_id)
    tool_call = FunctionToolCall(name="check_availability", arguments=json.dumps({"party": 2}), call_id="call_1")
    model = ScriptedLLM([
        [ChatChunk(id="r1", delta=ChoiceDelta(role="assistant", tool_calls=[tool_call]))],
        [ChatChunk(id="r2", delta=ChoiceDelta(role="assistant", content="We have a table at eight."))],
    ])
    session: AgentSession[Any] = AgentSession(llm=model)
    bridge = await CallstreamSession.attach(session, call_id, url=server.url, key=api_key)
    assert bridge is not None
    await session.start(Agent(instructions="Book tables.", tools=[check_availability]))
    await session.run(user_input="A table for two, please.")
    await session.aclose()
    await bridge.wait_closed()
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [brief(m) for m in messages if m["type"] != "metrics"] == [
        ("agent.state", "listening"),
        ("transcript.final", "user", "A table for two, please.", "user-1"),
        ("agent.state", "thinking"),
        ("function.call", "check_availability", {"party": 2}, "call_1"),
        ("function.result", "check_availability", {"free": ["20:00"], "party": 2}, "call_1"),
        ("agent.state", "speaking"),
        ("transcript.final", "agent", "We have a table at eight.", "agent-1"),
        ("agent.state", "listening"),
        ("call.ended", "completed", "user_initiated"),
    ]
    llm_metrics = [m["data"] for m in messages if m["type"] == "metrics"]  # from the reply's ChatMessage.metrics
    assert [d["stage"] for d in llm_metrics] == ["llm"]
    assert llm_metrics[0]["ttfb_ms"] >= 0


async def test_voice_events_interims_interruption_and_a_failed_close(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    ws = await subscribed(server, api_key, call_id)
    session: AgentSession[Any] = AgentSession()
    async with Publisher(server.url, api_key) as publisher:
        bridge = await CallstreamSession.attach(session, call_id, publisher=publisher)
        assert bridge is not None
        for text, final in [("I'd", False), ("I'd like to", False), ("I'd like to cancel.", True)]:
            session.emit("user_input_transcribed",
                         UserInputTranscribedEvent(transcript=text, is_final=final, speaker_id="spk_1"))
        user_turn = llm.ChatMessage(role="user", content=["I'd like to cancel."])
        session.emit("conversation_item_added", ConversationItemAddedEvent(item=user_turn))  # no duplicate
        session.emit("agent_state_changed", AgentStateChangedEvent(old_state="listening", new_state="speaking"))
        reply = llm.ChatMessage(role="assistant", content=["Sure, which book"], interrupted=True)
        session.emit("conversation_item_added", ConversationItemAddedEvent(item=reply))
        session.emit("agent_state_changed", AgentStateChangedEvent(old_state="speaking", new_state="idle"))
        error = llm.LLMError(timestamp=time.time(), label="scripted", error=RuntimeError("model down"),
                             recoverable=False)
        session.emit("close", CloseEvent(reason=CloseReason.ERROR, error=error))
        await bridge.wait_closed()
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert [brief(m) for m in messages] == [
        ("transcript.partial", "user", "I'd", "user-1"),
        ("transcript.partial", "user", "I'd like to", "user-1"),
        ("transcript.final", "user", "I'd like to cancel.", "user-1"),
        ("agent.state", "speaking"),  # LiveKit's "idle" has no callstream state: not published
        ("transcript.final", "agent", "Sure, which book", "agent-1"),
        ("call.ended", "failed", "error: RuntimeError('model down')"),
    ]
    assert messages[0]["data"]["speaker_id"] == "spk_1"
    assert messages[4]["data"]["interrupted"] is True


async def test_turn_metrics_and_a_barge_in(server: ServerProcess, api_key: str, call_id: str) -> None:
    """The figures LiveKit keeps on each message (its `MetricsReport`: STT, end of turn, LLM, TTS,
    end to end), and the caller speaking over the agent, which the server counts as an
    interruption."""
    ws = await subscribed(server, api_key, call_id)
    session: AgentSession[Any] = AgentSession()
    asked = llm.ChatMessage(role="user", content=["Is it open?"], metrics={
        "transcription_delay": 0.18, "end_of_turn_delay": 0.42, "on_user_turn_completed_delay": 0.001,
        "stt_metadata": {"model_name": "nova-3"}})  # fmt: skip
    answer = llm.ChatMessage(role="assistant", content=["Yes, until ten."], metrics={
        "llm_node_ttft": 0.35, "tts_node_ttfb": 0.21, "e2e_latency": 1.05,
        "llm_metadata": {"model_name": "gpt-4.1-mini"}})  # fmt: skip
    async with Publisher(server.url, api_key) as publisher:
        bridge = await CallstreamSession.attach(session, call_id, publisher=publisher)
        assert bridge is not None
        for event in [
            ("user_input_transcribed", UserInputTranscribedEvent(transcript="Is it open?", is_final=True)),
            ("conversation_item_added", ConversationItemAddedEvent(item=asked)),
            ("agent_state_changed", AgentStateChangedEvent(old_state="thinking", new_state="speaking")),
            ("user_state_changed", UserStateChangedEvent(old_state="listening", new_state="speaking")),
            ("agent_state_changed", AgentStateChangedEvent(old_state="speaking", new_state="listening")),
            ("conversation_item_added", ConversationItemAddedEvent(item=answer)),
            ("user_input_transcribed", UserInputTranscribedEvent(transcript="Sorry, I mean", is_final=False)),
        ]:  # fmt: skip
            session.emit(*event)
        await bridge.aclose()
    messages = [m for m in await recv_until(ws, "call.ended", timeout=15) if "seq" in m]
    await ws.close()
    assert [brief(m) for m in messages] == [
        ("transcript.final", "user", "Is it open?", "user-1"),
        ("metrics", "stt"),
        ("metrics", "eou"),
        ("agent.state", "speaking"),
        ("transcript.partial", "user", "…", "user-2"),  # the barge-in, before the agent stops
        ("agent.state", "listening"),
        ("metrics", "llm"),
        ("metrics", "tts"),
        ("metrics", "e2e"),
        ("transcript.final", "agent", "Yes, until ten.", "agent-1"),
        ("transcript.partial", "user", "Sorry, I mean", "user-2"),
        ("call.ended", "completed", None),
    ]
    figures = [m["data"] for m in messages if m["type"] == "metrics"]
    assert figures == [
        {"stage": "stt", "duration_ms": 180.0, "model": "nova-3"},
        {"stage": "eou", "duration_ms": 420.0, "callback_ms": 1.0},
        {"stage": "llm", "ttfb_ms": 350.0, "model": "gpt-4.1-mini"},
        {"stage": "tts", "ttfb_ms": 210.0},
        {"stage": "e2e", "duration_ms": 1050.0},
    ]
    assert "latency_ms" in messages[3]["data"]
    assert messages[5]["data"]["interrupted"] is True  # measured by the server


async def test_a_refused_key_is_logged_not_raised(server: ServerProcess, call_id: str) -> None:
    assert await CallstreamSession.attach(AgentSession(), call_id, url=server.url, key="cs_wrong") is None
    await asyncio.sleep(0)


def test_tool_output_reads_json_python_literals_or_keeps_text() -> None:
    assert tool_output('{"a": [1, 2]}') == {"a": [1, 2]}
    assert tool_output("{'a': (1, None)}") == {"a": (1, None)}
    assert tool_output("__import__('os')") == "__import__('os')"  # literals only, never code
    assert tool_output("booked for 8 pm") == "booked for 8 pm"


# -- the SIP transfer hook, against a stand-in LiveKit server ---------------------------------------


@pytest.fixture
async def livekit_server() -> AsyncIterator[tuple[str, list[Any], list[int]]]:
    """A LiveKit server's SIP service as the Twirp protocol has it: the requests it got, and the
    transfer statuses it answers with (in order)."""
    received: list[Any] = []
    statuses: list[int] = []

    async def transfer(request: web.Request) -> web.Response:
        received.append(lkapi.TransferSIPParticipantRequest.FromString(await request.read()))
        answer = lkapi.TransferSIPParticipantResponse(
            transfer_id="tr_1", status=statuses.pop(0), reason=lkapi.SIPTransferReason.Value("STR_REJECTED")
        )
        return web.Response(body=answer.SerializeToString(), content_type="application/protobuf")

    app = web.Application()
    app.router.add_post("/twirp/livekit.SIP/TransferSIPParticipant", transfer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", received, statuses
    await runner.cleanup()


async def test_the_sip_transfer_hook_refers_the_caller_and_reports_a_failed_transfer(
    livekit_server: tuple[str, list[Any], list[int]],
) -> None:
    url, received, statuses = livekit_server
    statuses += [lkapi.STS_TRANSFER_SUCCESSFUL, lkapi.STS_TRANSFER_FAILED]
    async with lkapi.LiveKitAPI(url, "devkey", "secret_at_least_32_characters_long") as client:
        hook = sip_transfer("room-42", "sip_caller", api=client)
        await hook("+14155550100", "billing question")
        with pytest.raises(RuntimeError, match=r"did not complete \(STR_REJECTED\)"):
            await hook("sip:desk@example.com", None)
    assert [(r.room_name, r.participant_identity, r.transfer_to) for r in received] == [
        ("room-42", "sip_caller", "tel:+14155550100"),
        ("room-42", "sip_caller", "sip:desk@example.com"),
    ]
