"""Publish a LiveKit Agents session's call to callstream with CallstreamSession.

A real voice agent (needs a LiveKit server or LiveKit Cloud, and its model credentials)::

    pip install 'callstream[livekit]'
    export CALLSTREAM_URL=http://127.0.0.1:8080 CALLSTREAM_KEY=...   # plus LIVEKIT_URL/API_KEY/API_SECRET
    python examples/livekit_agent.py dev

Without any LiveKit server or model, a scripted conversation through a real AgentSession::

    python examples/livekit_agent.py offline --key $KEY

Either way, watch it live with ``callstream tail --key $KEY --all``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, RunContext, cli, function_tool, llm
from livekit.agents.llm import ChatChunk, ChoiceDelta, FunctionToolCall
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from callstream.integrations.livekit import CallstreamSession

CALLSTREAM_URL = os.environ.get("CALLSTREAM_URL", "http://127.0.0.1:8080")
CALLSTREAM_KEY = os.environ.get("CALLSTREAM_KEY", "")


class Receptionist(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You book tables at Bella Vista. Be brief and friendly.")

    @function_tool
    async def check_availability(self, context: RunContext, party: int, time: str) -> dict[str, Any]:
        """Free tables for a party at a time (HH:MM)."""
        return {"free": [time, "20:30"], "party": party}


# -- the real agent -----------------------------------------------------------------------------

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession[Any] = AgentSession(
        stt="deepgram/nova-3", llm="openai/gpt-4.1-mini", tts="cartesia/sonic-2"
    )
    # One line: the room's name is the call id dashboards subscribe to.
    await CallstreamSession.attach(session, ctx.room.name, url=CALLSTREAM_URL, key=CALLSTREAM_KEY)
    await session.start(agent=Receptionist(), room=ctx.room)
    await session.generate_reply(instructions="Greet the caller.")


# -- offline: a real AgentSession with a scripted LLM, no LiveKit server --------------------------


class ScriptedStream(llm.LLMStream):
    def __init__(self, model: ScriptedLLM, chunks: list[ChatChunk], **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._chunks = chunks

    async def _run(self) -> None:
        for chunk in self._chunks:
            await asyncio.sleep(0.4)  # a model takes a moment
            self._event_ch.send_nowait(chunk)


class ScriptedLLM(llm.LLM):
    def __init__(self, replies: list[list[ChatChunk]]) -> None:
        super().__init__()
        self._replies = replies

    def chat(self, *, chat_ctx: llm.ChatContext, tools: list[llm.Tool] | None = None,
             conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS, **_: Any) -> ScriptedStream:
        return ScriptedStream(self, self._replies.pop(0), chat_ctx=chat_ctx, tools=tools or [],
                              conn_options=conn_options)


def says(text: str) -> list[ChatChunk]:
    return [ChatChunk(id=uuid.uuid4().hex, delta=ChoiceDelta(role="assistant", content=text))]


async def offline(url: str, key: str) -> None:
    call_id = f"livekit_{uuid.uuid4().hex[:8]}"
    lookup = FunctionToolCall(name="check_availability", call_id="call_1",
                              arguments=json.dumps({"party": 2, "time": "20:00"}))
    session: AgentSession[Any] = AgentSession(llm=ScriptedLLM([
        [ChatChunk(id="t1", delta=ChoiceDelta(role="assistant", tool_calls=[lookup]))],
        says("I have a table for two at eight. Shall I book it?"),
        says("Done! See you tonight at eight."),
    ]))
    bridge = await CallstreamSession.attach(session, call_id, url=url, key=key)
    await session.start(Receptionist())
    await session.run(user_input="Hi, a table for two at eight tonight, please.")
    await session.run(user_input="Yes, book it, thanks!")
    await session.aclose()
    if bridge is not None:
        await bridge.wait_closed()
    print(f"published {call_id}: GET {url}/v1/calls/{call_id}/transcript shows it")


if __name__ == "__main__":
    if sys.argv[1:2] == ["offline"]:
        key = sys.argv[sys.argv.index("--key") + 1] if "--key" in sys.argv else CALLSTREAM_KEY
        asyncio.run(offline(CALLSTREAM_URL, key))
    else:
        cli.run_app(server)
