"""Live audio from a real LiveKit Agents `AgentSession`: `CallstreamSession.attach(..., audio=True)`.

The session runs its voice path in-process, no LiveKit server: the caller's microphone is a
440 Hz tone at 48 kHz, the STT a scripted `stt.STT` (tests/integrations/livekit_agent.py), the TTS
a real `tts.TTS` speaking an 880 Hz tone at 24 kHz, and the loudspeaker an `io.AudioOutput` that
plays at once. What the adapter's publisher puts on the wire is read from a stand-in ingest
socket (tests/audio_capture.py), and in the last test by a listener of the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice import io

from callstream.integrations.livekit import CallstreamSession
from tests.audio_capture import AudioIngest, audio_ingest, dominant_hz, listening, sine
from tests.helpers import ServerProcess
from tests.integrations.livekit_agent import ContextLLM, ScriptedSTT

CALL = "call_livekit_audio"
ANSWER = "Answer 1: Be brief."


class Microphone(io.AudioInput):
    """The caller says a 440 Hz tone for a second (48 kHz, 10 ms frames), then nothing."""

    def __init__(self, seconds: float = 1.0) -> None:
        super().__init__(label="microphone")
        pcm = sine(440, seconds, 48000)
        self.frames = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
        self.read = 0

    async def __anext__(self) -> rtc.AudioFrame:
        if self.read == len(self.frames):
            await asyncio.Event().wait()  # a silent line sends nothing
        await asyncio.sleep(0.01)
        self.read += 1
        return rtc.AudioFrame(self.frames[self.read - 1], 48000, 1, 480)


class ToneStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(request_id="r1", sample_rate=24000, num_channels=1, mime_type="audio/pcm")
        output_emitter.push(sine(880, 1.0, 24000))
        output_emitter.flush()


class ToneTTS(tts.TTS):
    """Speaks every text as a second of 880 Hz at 24 kHz."""

    def __init__(self) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=24000, num_channels=1)

    def synthesize(self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> ToneStream:
        return ToneStream(tts=self, input_text=text, conn_options=conn_options)


class Loudspeaker(io.AudioOutput):
    """Plays what it is given at once: a segment is over as soon as it is flushed."""

    def __init__(self) -> None:
        super().__init__(label="loudspeaker", capabilities=io.AudioOutputCapabilities(pause=True))
        self.played = 0.0
        self._pushed = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._pushed:
            self.on_playback_started(created_at=time.time())
        self._pushed += frame.duration

    def flush(self) -> None:
        super().flush()
        self._finish(interrupted=False)

    def clear_buffer(self) -> None:
        self._finish(interrupted=True)

    def _finish(self, *, interrupted: bool) -> None:
        if not self._pushed:
            return
        pushed, self._pushed = self._pushed, 0.0
        self.played += pushed
        asyncio.get_running_loop().call_soon(
            lambda: self.on_playback_finished(playback_position=pushed, interrupted=interrupted)
        )


@contextlib.asynccontextmanager
async def voice_session(
    url: str, key: str, call_id: str, speaker: Loudspeaker | None = None, **options: Any
) -> AsyncIterator[tuple[AgentSession[Any], ScriptedSTT, Loudspeaker]]:
    """A started voice session attached with audio, until the block ends."""
    ears, speaker = ScriptedSTT(), speaker or Loudspeaker()
    session: AgentSession[Any] = AgentSession(
        llm=ContextLLM(), stt=ears, tts=ToneTTS(), turn_handling={"turn_detection": "stt"}
    )
    bridge = await CallstreamSession.attach(session, call_id, url=url, key=key, audio=True, **options)
    assert bridge is not None
    session.input.audio = Microphone()
    session.output.audio = speaker
    await session.start(Agent(instructions="Be brief."))
    try:
        while not ears.streams:
            await asyncio.sleep(0.01)
        yield session, ears, speaker
    finally:
        await session.aclose()
        await bridge.aclose()


def seconds(pcm: bytes, rate: int = 16000) -> float:
    return len(pcm) / 2 / rate


async def test_the_callers_and_the_agents_audio_go_on_their_tracks_resampled() -> None:
    async with audio_ingest() as ingest:
        async with voice_session(ingest.url, "k", CALL) as (_, ears, speaker):
            await ingest.until(lambda: seconds(ingest.pcm(CALL, "caller")) >= 0.5)
            await ears.says("Hello?")
            await ingest.until(lambda: seconds(ingest.pcm(CALL, "agent")) >= 0.95
                               and seconds(ingest.pcm(CALL, "caller")) >= 0.95)
        finals = [e["data"]["text"] for e in ingest.events() if e["type"] == "transcript.final"]
    assert ANSWER in finals  # the session ran as without the taps
    assert speaker.played == pytest.approx(1.0, abs=0.05)  # and played all of its speech
    assert ingest.formats() == [{"type": "audio.format", "call_id": CALL, "codec": "pcm_s16le", "sample_rate": 16000}]
    caller, agent = ingest.pcm(CALL, "caller"), ingest.pcm(CALL, "agent")
    assert seconds(caller) <= 1.0
    assert seconds(agent) <= 1.0  # once, though the session's output is a chain
    assert abs(dominant_hz(caller, 16000) - 440) < 5  # mono at 16 kHz: the pitch is right
    assert abs(dominant_hz(agent, 16000) - 880) < 5
    assert ingest.frames(CALL, "agent")[0].ms >= 450  # it answered half a second in: its track starts there


async def test_audio_rate_and_attaching_to_a_running_session() -> None:
    """Attached after `start()`, the taps go in at once; 8 kHz is sent as 8 kHz."""
    ears, speaker = ScriptedSTT(), Loudspeaker()
    session: AgentSession[Any] = AgentSession(
        llm=ContextLLM(), stt=ears, tts=ToneTTS(), turn_handling={"turn_detection": "stt"}
    )
    session.input.audio = Microphone()
    session.output.audio = speaker
    await session.start(Agent(instructions="Be brief."))
    ingest: AudioIngest
    async with audio_ingest() as ingest:
        bridge = await CallstreamSession.attach(session, CALL, url=ingest.url, key="k", audio=True,
                                                audio_sample_rate=8000)
        assert bridge is not None
        try:
            while not ears.streams:
                await asyncio.sleep(0.01)
            await ears.says("Hello?")
            await ingest.until(lambda: seconds(ingest.pcm(CALL, "agent"), 8000) >= 0.95)
        finally:
            await session.aclose()
            await bridge.aclose()
    assert ingest.formats()[0]["sample_rate"] == 8000
    assert abs(dominant_hz(ingest.pcm(CALL, "agent"), 8000) - 880) < 5


async def test_a_server_slow_to_answer_never_holds_the_session_up() -> None:
    """callstream answering its handshake 3 s late (overloaded, far away): attach returns at once,
    so the agent answers its caller on time, and the events go out once the server answers."""
    async with audio_ingest() as ingest:
        ingest.slow = 3.0
        began = time.monotonic()
        bridge = await CallstreamSession.attach(AgentSession(), CALL, url=ingest.url, key="k", audio=True,
                                                metadata={"agent": "support"})
        took = time.monotonic() - began
        assert bridge is not None
        await bridge.aclose()
    assert took < 1.5  # not the 10 s handshake timeout
    assert [e["type"] for e in ingest.events()] == ["call.started", "call.ended"]


async def test_an_unlisted_rate_is_refused() -> None:
    session: AgentSession[Any] = AgentSession()
    with pytest.raises(ValueError, match="sample_rate"):
        await CallstreamSession.attach(session, CALL, url="http://127.0.0.1:1", key="k", audio=True,
                                       audio_sample_rate=44100)


async def test_a_listener_of_the_real_server_hears_the_session(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    """End to end (needs the server side of live audio, branch `audio`)."""
    async with (
        listening(server, api_key, call_id) as listener,
        voice_session(server.url, api_key, call_id) as (_, ears, _speaker),
    ):
        await ears.says("Hello?")
        await listener.until(lambda ls: seconds(ls.pcm("caller")) >= 0.9 and seconds(ls.pcm("agent")) >= 0.9)
    assert listener.formats[0] == {"codec": "pcm_s16le", "sample_rate": 16000}
    assert abs(dominant_hz(listener.pcm("caller"), 16000) - 440) < 10
    assert abs(dominant_hz(listener.pcm("agent"), 16000) - 880) < 10


async def test_the_agents_speech_is_sent_as_it_is_heard() -> None:
    """The TTS hands its second of speech over at once, and LiveKit's room output queues it for
    playback; the agent track goes out as it plays (docs/protocol.md: a producer sends audio as it
    is heard), or a listener's jitter buffer, which plays what arrives, drops most of it."""
    async with audio_ingest() as ingest, voice_session(ingest.url, "k", CALL) as (_, ears, _speaker):
        await ears.says("Hello?")
        await ingest.until(lambda: bool(ingest.frames(CALL, "agent")))
        first = time.monotonic()
        await ingest.until(lambda: seconds(ingest.pcm(CALL, "agent")) >= 0.95)
        spread = time.monotonic() - first
    assert spread >= 0.8  # a second of speech took about a second to arrive, not a burst


class RoomSpeaker(Loudspeaker):
    """Plays in real time, as a room's output does: a segment is over once its audio has played,
    and `clear_buffer` (an interruption) cuts it off where it is."""

    def __init__(self) -> None:
        super().__init__()
        self._began = 0.0
        self._done: asyncio.TimerHandle | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if not self._pushed:
            self._began = time.monotonic()
        await super().capture_frame(frame)

    def flush(self) -> None:
        io.AudioOutput.flush(self)
        left = self._began + self._pushed - time.monotonic()
        self._done = asyncio.get_running_loop().call_later(max(left, 0), lambda: self._finish(interrupted=False))

    def clear_buffer(self) -> None:
        if self._done is not None:
            self._done.cancel()
        self._pushed = min(self._pushed, time.monotonic() - self._began)
        self._finish(interrupted=True)


async def test_speech_cut_off_by_an_interruption_is_not_sent() -> None:
    """The caller heard a fifth of the agent's second of speech before it was interrupted: the
    agent track has no more of it than that either."""
    async with (
        audio_ingest() as ingest,
        voice_session(ingest.url, "k", CALL, speaker=RoomSpeaker()) as (session, ears, speaker),
    ):
        await ears.says("Hello?")
        await ingest.until(lambda: seconds(ingest.pcm(CALL, "agent")) >= 0.2)
        await session.interrupt(force=True)
        await asyncio.sleep(1.0)
    assert speaker.played < 0.5
    assert 0.2 <= seconds(ingest.pcm(CALL, "agent")) < 0.5
