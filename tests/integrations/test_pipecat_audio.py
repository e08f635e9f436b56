"""Live audio from a real Pipecat pipeline: `CallstreamObserver(..., audio=True)`.

Synthetic audio (sine waves) is queued into a real `Pipeline` run by a real `PipelineWorker`, as
a transport and a TTS would push it; what the observer's publisher puts on the wire is read from
a stand-in ingest socket (tests/audio_capture.py), and in the last test by a listener of the real
server. The tones tell the tracks apart and show the resampling: a tone played at the wrong
rate has the wrong pitch.
"""

from __future__ import annotations

import time
import warnings

import pytest

with warnings.catch_warnings():  # pipecat imports the deprecated `audioop` module
    warnings.simplefilter("ignore", DeprecationWarning)
    from pipecat.frames.frames import (
        Frame,
        InputAudioRawFrame,
        OutputAudioRawFrame,
        StartFrame,
        TTSAudioRawFrame,
    )
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.transports.base_output import BaseOutputTransport
    from pipecat.transports.base_transport import TransportParams

    from callstream.integrations.pipecat import CallstreamObserver

from tests.audio_capture import audio_ingest, dominant_hz, listening, sine
from tests.helpers import ServerProcess
from tests.integrations.test_pipecat import run_pipeline

CALL = "call_pipecat_audio"


def caller_frames(seconds: float = 1.0) -> list[Frame]:
    """The caller at 48 kHz stereo (a WebRTC transport's), 440 Hz, in 20 ms frames."""
    pcm = sine(440, seconds, 48000, channels=2)
    step = 960 * 4
    return [InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=48000, num_channels=2)
            for i in range(0, len(pcm), step)]  # fmt: skip


def tts_frames(seconds: float = 1.0) -> list[Frame]:
    """The bot's speech as a TTS makes it: 24 kHz mono, 880 Hz, in 100 ms frames."""
    pcm = sine(880, seconds, 24000)
    step = 2400 * 2
    return [TTSAudioRawFrame(audio=pcm[i : i + step], sample_rate=24000, num_channels=1, context_id="c1")
            for i in range(0, len(pcm), step)]  # fmt: skip


class Speaker(BaseOutputTransport):  # type: ignore[misc]
    """An output transport whose peer takes every frame at once: what it plays it pushes on."""

    def __init__(self) -> None:
        super().__init__(TransportParams(audio_out_enabled=True, audio_out_sample_rate=24000,
                                         audio_out_end_silence_secs=0))
        self.played = 0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)  # connected to its peer, as a real transport says

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self.played += len(frame.audio)
        return True


def seconds(pcm: bytes, rate: int = 16000) -> float:
    return len(pcm) / 2 / rate


async def test_the_callers_and_the_bots_audio_go_on_their_tracks_resampled() -> None:
    async with audio_ingest() as ingest:
        observer = CallstreamObserver(CALL, url=ingest.url, key="k", audio=True)
        await run_pipeline(observer, caller_frames() + tts_frames())
    assert ingest.formats() == [{"type": "audio.format", "call_id": CALL, "codec": "pcm_s16le", "sample_rate": 16000}]
    first_frame = next(i for i, m in enumerate(ingest.messages) if not isinstance(m, dict))
    assert ingest.messages.index(ingest.formats()[0]) < first_frame
    caller, agent = ingest.pcm(CALL, "caller"), ingest.pcm(CALL, "agent")
    assert 0.9 <= seconds(caller) <= 1.0  # all of it, but what the resampler still holds
    assert 0.9 <= seconds(agent) <= 1.0
    assert abs(dominant_hz(caller, 16000) - 440) < 5  # mono at 16 kHz: the pitch is right
    assert abs(dominant_hz(agent, 16000) - 880) < 5
    assert {len(f.payload) for f in ingest.frames()} <= set(range(2, 641, 2))  # at most 20 ms
    assert ingest.frames(CALL, "agent")[0].ms >= 900  # the bot spoke a second after the caller began
    assert ingest.events()[-1]["type"] == "call.ended"  # the events went as usual


async def test_with_an_output_transport_the_bot_is_heard_once_as_played() -> None:
    speaker = Speaker()
    async with audio_ingest() as ingest:
        observer = CallstreamObserver(CALL, url=ingest.url, key="k", audio=True, audio_sample_rate=8000)
        await run_pipeline(observer, tts_frames(), services=[IdentityFilter(), speaker])
    agent = ingest.pcm(CALL, "agent")
    assert speaker.played == 48000  # the transport played the second of speech
    assert 0.9 <= seconds(agent, 8000) <= 1.0  # heard once: the TTS's frames are not sent besides
    assert abs(dominant_hz(agent, 8000) - 880) < 5
    assert ingest.formats()[0]["sample_rate"] == 8000
    assert not ingest.frames(CALL, "caller")


class StartClock(IdentityFilter):  # type: ignore[misc]
    """Notes when the pipeline's StartFrame reaches it: when the pipeline began to run."""

    def __init__(self) -> None:
        super().__init__()
        self.started: float | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame) and self.started is None:
            self.started = time.monotonic()
        await super().process_frame(frame, direction)


async def test_a_server_slow_to_answer_never_holds_the_pipeline_up() -> None:
    """callstream answering its handshake 3 s late (overloaded, far away): the pipeline runs at
    once, the audio heard meanwhile is dropped, and the events go out once it answers."""
    clock = StartClock()
    async with audio_ingest() as ingest:
        ingest.slow = 3.0
        observer = CallstreamObserver(CALL, url=ingest.url, key="k", audio=True)
        began = time.monotonic()
        await run_pipeline(observer, caller_frames(0.2), services=[clock])
    assert clock.started is not None
    assert clock.started - began < 1.5  # not the 10 s handshake timeout
    assert observer.events is not None
    assert observer.events.audio_dropped > 0  # live only: not held back
    assert ingest.events()[-1]["type"] == "call.ended"


def test_an_unlisted_rate_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        CallstreamObserver(CALL, url="http://127.0.0.1:1", key="k", audio=True, audio_sample_rate=44100)


async def test_a_listener_of_the_real_server_hears_the_pipeline(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    """End to end (needs the server side of live audio, branch `audio`)."""
    async with listening(server, api_key, call_id) as listener:
        observer = CallstreamObserver(call_id, url=server.url, key=api_key, audio=True)
        await run_pipeline(observer, caller_frames(0.5) + tts_frames(0.5))
        await listener.until(lambda ls: seconds(ls.pcm("caller")) >= 0.4 and seconds(ls.pcm("agent")) >= 0.4)
    assert listener.formats[0] == {"codec": "pcm_s16le", "sample_rate": 16000}
    assert abs(dominant_hz(listener.pcm("caller"), 16000) - 440) < 10
    assert abs(dominant_hz(listener.pcm("agent"), 16000) - 880) < 10
