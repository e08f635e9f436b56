"""`Publisher.send_audio`: a call's live audio on the ingest socket (docs/protocol.md, Live audio).

What a producer puts on the wire is read from a stand-in ingest server on loopback (a real
WebSocket server keeping the bytes as they came: tests/audio_capture.py); the last test has a
listener of the real server hear it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from callstream import Publisher
from callstream.audio_send import START_MS, AudioCall
from tests.audio_capture import audio_ingest, listening, sine
from tests.helpers import ServerProcess

CALL = "call_audio_1"
FORMAT_16K = {"type": "audio.format", "call_id": CALL, "codec": "pcm_s16le", "sample_rate": 16000}


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition()` until it holds (the publisher's connection state has no event to await)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_audio_goes_out_as_its_format_then_frames_of_20_ms() -> None:
    pcm = sine(440, 1.0, 16000)
    async with audio_ingest() as ingest, Publisher(ingest.url, "k") as pub:
        assert pub.send_audio(CALL, "caller", pcm) is True
        await ingest.until(lambda: len(ingest.frames()) == 50)
        assert ingest.messages[0] == FORMAT_16K
        frames = ingest.frames(CALL, "caller")
        assert [f.ms for f in frames] == list(range(0, 1000, 20))
        assert {len(f.payload) for f in frames} == {640}
        assert ingest.pcm(CALL, "caller") == pcm
        assert len(ingest.formats()) == 1  # once per call and socket
        assert pub.statistics().audio_sent == 50


def test_tracks_advance_by_samples_and_start_where_the_clock_is() -> None:
    """Stamps in ms from the call's first audio: a track goes on where its samples end (the
    delivery's jitter does not show), a track that starts, or resumes after a silence, starts
    at the time it came, and audio delivered faster than real time stays contiguous."""
    call = AudioCall(CALL, "pcm_s16le", 8000, now=100.0)
    thirty_ms = bytes(2 * 240)

    def stamps(track: int, pcm: bytes, now: float) -> list[int]:
        return [int.from_bytes(f[4 + len(CALL) : 8 + len(CALL)], "big") for f in call.frames(track, pcm, now)]

    assert stamps(0, thirty_ms, 100.0) == [0, 20]
    assert stamps(0, thirty_ms, 100.037) == [30, 50]  # 7 ms late: still contiguous
    assert stamps(1, bytes(2 * 8000), 101.5) == [1500 + 20 * i for i in range(50)]  # the agent answers
    assert stamps(1, bytes(2 * 160), 101.52) == [2500]  # a TTS burst: ahead of the clock, contiguous
    assert stamps(0, thirty_ms, 103.0) == [3000, 3020]  # the caller again after a silence


def test_tracks_sent_together_both_start_at_0_ms() -> None:
    """The call's second track, first sent a moment after the first (two `send_audio` calls in
    a row, on a loaded machine), starts at 0 ms beside it; one that starts later than
    `START_MS` starts when it came (placed at 0 it would have little of `RESYNC_MS` left for
    its delivery's jitter)."""

    def agent_starts_at(now: float) -> int:
        call = AudioCall(CALL, "pcm_s16le", 8000, now=100.0)
        call.frames(0, bytes(2 * 160), 100.0)  # the caller, at the call's first audio
        frame = call.frames(1, bytes(2 * 160), now)[0]
        return int.from_bytes(frame[4 + len(CALL) : 8 + len(CALL)], "big")

    assert agent_starts_at(100.0 + START_MS / 1000 * 0.9) == 0
    assert agent_starts_at(100.15) == 150


def test_mulaw_frames_hold_a_byte_a_sample() -> None:
    call = AudioCall(CALL, "mulaw", 8000, now=0.0)
    frames = call.frames(1, bytes(400), 0.0)
    assert [len(f) - 8 - len(CALL) for f in frames] == [160, 160, 80]


async def test_bad_audio_is_refused_and_sends_nothing() -> None:
    async with audio_ingest() as ingest, Publisher(ingest.url, "k") as pub:
        refused = [
            ("bot", bytes(640), {}),
            (2, bytes(640), {}),
            (True, bytes(640), {}),
            ("caller", bytes(641), {}),  # half a 16-bit sample
            ("caller", bytes(640), {"sample_rate": 44100}),
            ("caller", bytes(640), {"sample_rate": 16000.0}),
            ("caller", bytes(640), {"codec": "opus"}),
        ]
        for track, pcm, options in refused:
            with pytest.raises(ValueError, match=r"track|sample|sample_rate|codec"):
                pub.send_audio(CALL, track, pcm, **options)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="call_id"):
            pub.send_audio("not a call id", "caller", bytes(640))
        assert pub.send_audio(CALL, "agent", bytes(640)) is True
        with pytest.raises(ValueError, match="resample"):
            pub.send_audio(CALL, "agent", bytes(320), sample_rate=8000)  # a call has one format
        assert pub.send_audio(CALL, 0, bytes(640)) is True
        await ingest.until(lambda: len(ingest.frames()) == 2)
        assert ingest.formats() == [FORMAT_16K]
        assert [f.track for f in ingest.frames()] == [1, 0]
        assert ingest.frames()[0].ms == 0
        assert pub.statistics().audio_dropped == 0


async def test_audio_never_holds_an_event_back() -> None:
    async with audio_ingest() as ingest, Publisher(ingest.url, "k") as pub:
        assert pub.send_audio(CALL, "agent", sine(300, 2.0, 16000))
        seq = pub.send(CALL, "agent.state", {"state": "speaking"})
        await seq
        await ingest.until(lambda: len(ingest.frames()) == 100)
        assert ingest.messages[0]["type"] == "agent.state"  # type: ignore[index]
        assert ingest.messages[1] == FORMAT_16K


async def test_a_socket_behind_loses_the_oldest_audio_first() -> None:
    async with audio_ingest() as ingest, Publisher(ingest.url, "k") as pub:
        assert pub.send_audio(CALL, "caller", bytes(2 * 16000 * 12))  # 600 frames at once
        await ingest.until(lambda: len(ingest.frames()) == 500)
        assert ingest.frames()[0].ms == 2000  # the first 2 s went
        assert pub.statistics().audio_dropped == 100


async def test_audio_is_dropped_while_disconnected_and_its_format_sent_again_after() -> None:
    async with audio_ingest() as ingest, Publisher(ingest.url, "k", reconnect_max_delay=0.2) as pub:
        assert pub.send_audio(CALL, "caller", bytes(640))
        await ingest.until(lambda: len(ingest.frames()) == 1)
        ingest.refuse = True
        await ingest.drop_all()
        await wait_for(lambda: not pub.statistics().connected)
        assert pub.send_audio(CALL, "caller", bytes(640 * 5)) is False  # live or nothing: not kept
        assert pub.statistics().audio_dropped == 5
        ingest.refuse = False
        await wait_for(lambda: pub.statistics().connected)
        assert pub.send_audio(CALL, "caller", bytes(640)) is True
        await ingest.until(lambda: len(ingest.frames()) == 2)
        again = ingest.connections[-1]
        assert again[0] == FORMAT_16K  # the new socket hears the format before the frame
        assert len(ingest.frames()) == 2


async def test_a_call_that_ended_starts_its_audio_anew() -> None:
    async with audio_ingest() as ingest, Publisher(ingest.url, "k") as pub:
        assert pub.send_audio(CALL, "caller", bytes(640))
        await ingest.until(lambda: len(ingest.frames()) == 1)
        assert pub.send_audio(CALL, "agent", bytes(640))  # not sent yet when the call ends: dropped
        await pub.publish(CALL, "call.ended", {"status": "completed", "duration_ms": 20})
        assert pub.send_audio(CALL, "caller", bytes(320), sample_rate=8000)  # a new call of the same id
        await ingest.until(lambda: len(ingest.frames()) == 2)
        assert [f["sample_rate"] for f in ingest.formats()] == [16000, 8000]
        assert [(f.track, f.ms) for f in ingest.frames()] == [(0, 0), (0, 0)]
        assert pub.statistics().audio_dropped == 1


async def test_a_listener_of_the_real_server_hears_what_send_audio_sent(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    """End to end (needs the server side of live audio, branch `audio`)."""
    caller, agent = sine(440, 0.1, 16000), sine(660, 0.1, 16000)
    async with listening(server, api_key, call_id) as listener, Publisher(server.url, api_key) as pub:
        await pub.publish(call_id, "agent.state", {"state": "listening"})

        async with asyncio.timeout(15):
            while True:  # live only: keep speaking until the listener hears it
                pub.send_audio(call_id, "caller", caller)
                pub.send_audio(call_id, "agent", agent)
                try:
                    await listener.until(lambda ls: len(ls.frames) >= 20, timeout=0.5)
                    break
                except TimeoutError:
                    continue
        assert listener.formats[0] == {"codec": "pcm_s16le", "sample_rate": 16000}
        for track, pcm in (("caller", caller), ("agent", agent)):
            frames = [f for f in listener.frames if f.track == {"caller": 0, "agent": 1}[track]]
            assert frames, track
            assert all(f.call_id == call_id and f.payload in pcm for f in frames)
        await pub.publish(call_id, "call.ended", {"status": "completed", "duration_ms": 100})
