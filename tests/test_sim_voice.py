"""`callstream simulate --audio`: the simulated calls speak their transcripts on their tracks.

The command runs as a user runs it (a subprocess) against a stand-in ingest socket that keeps
what it receives (tests/audio_capture.py); the last test has a listener of the real server hear a
simulated call. espeak-ng is not needed: without it the voices are tones, one per word, the
caller's lower than the agent's, which is what these tests hear.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import wave
from pathlib import Path

import pytest

from callstream.audio import parse_frame
from callstream.sim_voice import PITCH, SAMPLE_RATE, parse_wav, resample, speech, tones
from callstream.simulate import run_simulation
from tests.audio_capture import AudioIngest, audio_ingest, dominant_hz
from tests.helpers import ServerProcess, open_events, recv_until, send, steady_seed


async def simulate(ingest: AudioIngest, *options: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callstream", "simulate", "--url", ingest.url, "--key", "k", "--quiet", *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()


async def test_simulate_audio_speaks_the_callers_and_the_agents_turns() -> None:
    async with audio_ingest() as ingest:
        await simulate(ingest, "--audio", "--calls", "2", "--speed", "3", "--duration", "8",
                       "--seed", str(steady_seed()), "--no-stagger")
    calls = {f.call_id for f in ingest.frames()}
    assert calls
    for call_id in calls:
        formats = [m for m in ingest.formats() if m["call_id"] == call_id]
        assert formats == [{"type": "audio.format", "call_id": call_id, "codec": "pcm_s16le", "sample_rate": 16000}]
        first = next(i for i, m in enumerate(ingest.messages) if getattr(m, "call_id", None) == call_id)
        assert ingest.messages.index(formats[0]) < first  # the format goes first
        for track in ("caller", "agent"):
            stamps = [f.ms for f in ingest.frames(call_id, track)]
            assert stamps == sorted(stamps)
    heard = {track: b"".join(ingest.pcm(c, track) for c in calls) for track in ("caller", "agent")}
    assert all(len(pcm) > SAMPLE_RATE for pcm in heard.values()), "both sides spoke over a second"
    for track, pcm in heard.items():  # tones: each word within 20 % of its speaker's pitch
        assert 0.75 * PITCH[track] <= dominant_hz(pcm, SAMPLE_RATE) <= 1.25 * PITCH[track]
    assert {len(f.payload) for f in ingest.frames()} <= set(range(2, 641, 2))


async def test_without_audio_the_simulator_sends_none() -> None:
    async with audio_ingest() as ingest:
        await simulate(ingest, "--calls", "2", "--speed", "20", "--duration", "1", "--seed", "1")
    assert ingest.events()
    assert not ingest.frames()
    assert not ingest.formats()


def test_tones_take_the_time_the_words_take() -> None:
    pcm = tones("one two three", "agent")
    assert 0.5 < len(pcm) / 2 / SAMPLE_RATE < 1.5
    assert len(tones("one two three", "agent", speed=2.0)) < len(pcm) * 0.6
    assert tones("", "caller") == b""


def test_an_espeak_wav_is_read_and_resampled_to_16_khz() -> None:
    """espeak-ng writes a 22,050 Hz mono WAV to its pipe (its header cannot know the length)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22050)
        wav.writeframes(tones("hello there", "agent"))  # any audio will do
    raw = bytearray(buffer.getvalue())
    raw[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # the data chunk's size, as a pipe has it
    rate, pcm = parse_wav(bytes(raw)) or (0, b"")
    assert rate == 22050
    assert pcm == tones("hello there", "agent")
    resampled = resample(pcm, 22050, 16000)
    assert abs(len(resampled) / 2 - len(pcm) / 2 * 16000 / 22050) <= 1
    assert parse_wav(b"not a wav") is None


async def test_a_listener_of_the_real_server_hears_a_simulated_call(server: ServerProcess, api_key: str) -> None:
    """End to end (needs the server side of live audio, branch `audio`)."""
    ws = await open_events(server, api_key)
    await send(ws, {"type": "subscribe", "call_id": "*"})
    await recv_until(ws, "subscribed")
    sim = asyncio.create_task(run_simulation(server.url, api_key, calls=1, speed=3, duration=60,
                                             seed=steady_seed(), audio=True))
    try:
        first = await recv_until(ws, "agent.state", timeout=15)
        await send(ws, {"type": "listen", "call_id": first[-1]["call_id"]})
        tracks: set[int] = set()
        listening = []
        async with asyncio.timeout(30):
            while tracks != {0, 1}:
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    tracks.add(parse_frame(raw).track)
                elif '"listening"' in raw:
                    listening.append(raw)
        assert listening
    finally:
        sim.cancel()
        await asyncio.gather(sim, return_exceptions=True)
        await ws.close()


async def test_espeak_ng_speaks_when_it_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """espeak-ng is run as a user's machine has it: a program on PATH writing a WAV to stdout
    (here a stand-in program writing a second of 22,050 Hz audio, and its arguments to a file)."""
    program = tmp_path / "espeak-ng"
    program.write_text(
        f"#!{sys.executable}\n"
        "import io, sys, wave\n"
        f"open({str(tmp_path / 'args')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        "buffer = io.BytesIO()\n"
        "with wave.open(buffer, 'wb') as w:\n"
        "    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050); w.writeframes(bytes(44100))\n"
        "sys.stdout.buffer.write(buffer.getvalue())\n"
    )
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    pcm = await speech("Good morning", "agent")
    assert len(pcm) == 2 * SAMPLE_RATE  # a second, at 16 kHz
    assert (tmp_path / "args").read_text().endswith("-- Good morning")
    program.write_text("#!/bin/sh\nexit 1\n")  # espeak-ng fails: tones instead
    assert await speech("Good morning", "agent") == tones("Good morning", "agent")
