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
from livekit.agents import Agent, AgentSession, stt, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice import io

from callstream.integrations.livekit import CallstreamSession, _Pacer
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
    url: str, key: str, call_id: str, speaker: Loudspeaker | None = None, *,
    interruptible: bool = False, **options: Any,
) -> AsyncIterator[tuple[AgentSession[Any], ScriptedSTT, Loudspeaker]]:
    """A started voice session attached with audio, until the block ends. `interruptible`: the
    words the STT hears interrupt the agent at once (no VAD, whose bundled silero hears no speech
    in a tone, and no AEC warmup, which ignores the caller for the agent's first 3 s)."""
    ears, speaker = ScriptedSTT(), speaker or Loudspeaker()
    voice: dict[str, Any] = {"vad": None, "aec_warmup_duration": None} if interruptible else {}
    session: AgentSession[Any] = AgentSession(
        llm=ContextLLM(), stt=ears, tts=ToneTTS(), turn_handling={"turn_detection": "stt"}, **voice
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
    `pause` holds it where it is until `resume`, and `clear_buffer` (an interruption) cuts it off
    where it is. `pauses` keeps when each pause began and ended (monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self._began = 0.0
        self._flushed = False
        self._done: asyncio.TimerHandle | None = None
        self._paused_at: float | None = None
        self.pauses: list[list[float]] = []

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if not self._pushed:
            self._began, self._flushed = time.monotonic(), False
        await super().capture_frame(frame)

    def flush(self) -> None:
        io.AudioOutput.flush(self)
        self._flushed = True
        self._finish_later()

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()
            self.pauses.append([self._paused_at])
            if self._done is not None:
                self._done.cancel()

    def resume(self) -> None:
        if self._paused_at is not None:
            now = time.monotonic()
            self._began += now - self._paused_at
            self._paused_at = None
            self.pauses[-1].append(now)
            self._finish_later()

    def clear_buffer(self) -> None:
        if self._done is not None:
            self._done.cancel()
        now = self._paused_at if self._paused_at is not None else time.monotonic()
        self._pushed = min(self._pushed, now - self._began)
        self._finish(interrupted=True)

    def _finish_later(self) -> None:
        if self._flushed and self._pushed and self._paused_at is None:
            left = self._began + self._pushed - time.monotonic()
            self._done = asyncio.get_running_loop().call_later(max(left, 0), lambda: self._finish(interrupted=False))


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


def hear(ears: ScriptedSTT, kind: stt.SpeechEventType, text: str = "") -> None:
    """The STT reports one event of the caller's: speech starting or ending, or words heard."""
    heard = [stt.SpeechData(language="en", text=text)] if text else []
    ears.streams[-1]._event_ch.send_nowait(stt.SpeechEvent(type=kind, alternatives=heard))


async def caller_breaks_in(ingest: AudioIngest, ears: ScriptedSTT, speaker: RoomSpeaker) -> float:
    """A fifth of a second into the agent's speech the caller starts talking: LiveKit pauses the
    playback (the interruption is not confirmed yet). Returns the agent track's seconds by then."""
    await ears.says("Hello?")
    await ingest.until(lambda: seconds(ingest.pcm(CALL, "agent")) >= 0.2)
    hear(ears, stt.SpeechEventType.START_OF_SPEECH)
    hear(ears, stt.SpeechEventType.INTERIM_TRANSCRIPT, "wait")
    async with asyncio.timeout(1):
        while not speaker.pauses:
            await asyncio.sleep(0.005)
    return seconds(ingest.pcm(CALL, "agent"))


async def test_nothing_is_sent_while_the_playback_is_paused() -> None:
    """The caller talks over the agent and stops without a word more: LiveKit pauses the playback,
    and resumes it once the false interruption times out (2 s by default). The agent track holds
    still for the pause and goes on at the pace of the playback after it."""
    async with (
        audio_ingest() as ingest,
        voice_session(ingest.url, "k", CALL, speaker=RoomSpeaker(), interruptible=True) as (_, ears, speaker),
    ):
        at_pause = await caller_breaks_in(ingest, ears, speaker)
        hear(ears, stt.SpeechEventType.END_OF_SPEECH)
        async with asyncio.timeout(5):
            while len(speaker.pauses[0]) < 2:
                await asyncio.sleep(0.005)
        at_resume = seconds(ingest.pcm(CALL, "agent"))
        await ingest.until(lambda: seconds(ingest.pcm(CALL, "agent")) >= 0.95)
        rest = time.monotonic() - speaker.pauses[0][1]
        await asyncio.sleep(0.3)
    paused = speaker.pauses[0][1] - speaker.pauses[0][0]
    assert paused >= 1.5  # LiveKit held the playback (its 2 s timeout from the caller's silence)
    assert at_resume - at_pause <= 0.04  # at most the frame on its way when the pause came
    assert rest >= (1.0 - at_resume) - 0.15  # the rest went at the pace it played
    assert seconds(ingest.pcm(CALL, "agent")) <= 1.0
    assert speaker.played == pytest.approx(1.0, abs=0.05)


async def test_speech_paused_then_cut_off_is_not_sent() -> None:
    """The caller talks over the agent, and their words confirm the interruption a second later:
    LiveKit paused the playback first, then clears it (and answers them). The agent track stops
    at the pause: none of the rest of the cut-off answer is sent."""
    async with (
        audio_ingest() as ingest,
        voice_session(ingest.url, "k", CALL, speaker=RoomSpeaker(), interruptible=True) as (_, ears, speaker),
    ):
        at_pause = await caller_breaks_in(ingest, ears, speaker)
        await asyncio.sleep(1.0)
        at_words = seconds(ingest.pcm(CALL, "agent"))
        hear(ears, stt.SpeechEventType.FINAL_TRANSCRIPT, "wait a moment")
        hear(ears, stt.SpeechEventType.END_OF_SPEECH)
        async with asyncio.timeout(1):
            while not speaker.played:
                await asyncio.sleep(0.005)
        heard = speaker.played
        await asyncio.sleep(0.2)  # the next answer comes after the endpointing delay (0.5 s)
        at_clear = seconds(ingest.pcm(CALL, "agent"))
    assert heard < 0.3  # the caller heard the fifth of a second before the pause
    assert at_words - at_pause <= 0.04  # nothing while paused
    assert at_clear - at_pause <= 0.04  # nor of the rest once cleared


async def test_a_closed_pacer_sends_nothing_more() -> None:
    """Once the call's audio is closed the tap stays in the session's output chain: speech it
    hands over later is dropped, not paced out by a new task."""
    sent: list[bytes] = []
    pacer = _Pacer(sent.append, 16000)
    pacer.push(bytes(640))
    await asyncio.sleep(0)  # its frame goes out
    pacer.close()
    await asyncio.sleep(0.03)
    pacer.push(bytes(6400))
    await asyncio.sleep(0.05)
    assert sent == [bytes(640)]
