"""A LiveKit Agents voice session under live control, for the adapters' control tests.

The session runs its voice path in-process, no LiveKit server: audio input is a stream of silent
frames, the STT a real `stt.STT` whose stream reports what the test makes the caller say, turn
detection is the STT's (`"stt"`), and the LLM a real `llm.LLM` answering "Answer N: <the last line
of the agent's instructions>", so an instruction shows in what the agent says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm, stt
from livekit.agents.llm import ChatChunk, ChoiceDelta
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice import io

from callstream.integrations.controls import TransferHook
from callstream.integrations.livekit import CallstreamSession
from tests.helpers import ServerProcess
from tests.integrations.events import CallerSays

INSTRUCTIONS = "Be brief."


class AnswerStream(llm.LLMStream):
    def __init__(self, model: ContextLLM, text: str, delay: float, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._text, self._delay = text, delay

    async def _run(self) -> None:
        await asyncio.sleep(self._delay)
        self._event_ch.send_nowait(ChatChunk(id="r", delta=ChoiceDelta(role="assistant", content=self._text)))


class ContextLLM(llm.LLM):
    """Answers every turn with its number and the last line of the instructions it was given."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.turns, self.delay = 0, delay

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> AnswerStream:
        self.turns += 1
        system = [m.text_content or "" for m in chat_ctx.messages() if m.role == "system"]
        text = f"Answer {self.turns}: {system[0].splitlines()[-1]}"
        return AnswerStream(self, text, self.delay, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class Silence(io.AudioInput):
    """A caller's microphone, silent: the STT below says what was heard."""

    def __init__(self) -> None:
        super().__init__(label="silence")

    async def __anext__(self) -> rtc.AudioFrame:
        await asyncio.sleep(0.01)
        return rtc.AudioFrame(b"\0" * 320, 16000, 1, 160)


class HeardStream(stt.RecognizeStream):
    async def _run(self) -> None:
        async for _ in self._input_ch:
            pass  # the audio is silence; what was "heard" comes from ScriptedSTT.hear


class ScriptedSTT(stt.STT):
    """A streaming STT reporting the caller's turns the test scripts."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=True))
        self.streams: list[HeardStream] = []

    async def _recognize_impl(self, buffer: Any, *, language: Any = None, conn_options: Any = None) -> stt.SpeechEvent:
        raise NotImplementedError

    def stream(self, *, language: Any = None, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> HeardStream:
        self.streams.append(HeardStream(stt=self, conn_options=conn_options))
        return self.streams[-1]

    async def says(self, text: str) -> None:
        """One caller turn: speech starts, its final transcript, speech ends."""
        kinds = (stt.SpeechEventType.START_OF_SPEECH, stt.SpeechEventType.FINAL_TRANSCRIPT,
                 stt.SpeechEventType.END_OF_SPEECH)
        for kind in kinds:
            heard = [stt.SpeechData(language="en", text=text)] if kind == stt.SpeechEventType.FINAL_TRANSCRIPT else []
            self.streams[-1]._event_ch.send_nowait(stt.SpeechEvent(type=kind, alternatives=heard))


async def run_call(
    server: ServerProcess, key: str, call_id: str, script: Callable[[CallerSays], Awaitable[None]], *,
    transfer: TransferHook | None = None, slow: bool = False,
) -> None:
    """A controllable voice session for the call while `script` drives it, until it closes (the
    script's last request closes it). `slow`: each answer takes a second to come."""
    ears = ScriptedSTT()
    session: AgentSession[Any] = AgentSession(
        llm=ContextLLM(1.0 if slow else 0.0), stt=ears, turn_handling={"turn_detection": "stt"}
    )
    bridge = await CallstreamSession.attach(session, call_id, url=server.url, key=key, control=True,
                                            transfer=transfer)
    assert bridge is not None
    session.input.audio = Silence()
    await session.start(Agent(instructions=INSTRUCTIONS))
    try:
        while not ears.streams:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(script(ears.says), 60)
        await asyncio.wait_for(bridge.wait_closed(), 15)
    finally:
        await session.aclose()
        await bridge.aclose()


FIRST = f"Answer 1: {INSTRUCTIONS}"
