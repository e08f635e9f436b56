"""The simulator's voices (``callstream simulate --audio``): its transcripts, spoken live.

Each utterance a simulated call starts is spoken on its speaker's track (the caller's or the
agent's) as its words appear: with espeak-ng (Debian's ``espeak-ng`` package) when it is
installed, else as tones, one per word, shaped like syllables (a pitch per word, the caller lower
than the agent), so a listener hears who speaks, when, and for how long. :class:`Voices` streams
every call's audio in 20 ms frames at the pace it is heard, through the simulation's publisher;
an agent interrupted stops speaking at once.

Pure Python on purpose (no numpy): the simulator is part of the core package.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import math
import shutil
import struct
import sys
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from callstream.errors import PublishError
from callstream.publisher import Publisher
from callstream.sim_scripts import Say

__all__ = ["SAMPLE_RATE", "Voices", "espeak", "parse_wav", "resample", "speech", "tones"]

SAMPLE_RATE: Final = 16_000
FRAME_SAMPLES: Final = SAMPLE_RATE // 50  # 20 ms
FRAME_BYTES: Final = FRAME_SAMPLES * 2
TRACK_OF: Final = {"user": "caller", "agent": "agent"}
PITCH: Final = {"caller": 150.0, "agent": 210.0}  # Hz: a word's tone is within ±20 % of it
ESPEAK_VOICE: Final = {"caller": ("en-us+m3", "35"), "agent": ("en-us+f3", "55")}  # voice, pitch
WORDS_PER_MINUTE: Final = 150  # the simulator's speaking pace: 2.5 words a second
MAX_SPOKEN_CHARS: Final = 2_000
AMPLITUDE: Final = 0.3 * 32767


# -- speech -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2048)
def _word_tone(word: str, pitch: float, speed: float) -> bytes:
    """One word as a tone: its length grows with the word's, its pitch depends on it, and a
    half-sine envelope rises and falls like a syllable's (no clicks)."""
    seconds = min(0.12 + 0.045 * len(word), 0.5) / speed
    count = max(int(seconds * SAMPLE_RATE), 1)
    step = 0.4 * ((zlib.crc32(word.lower().encode()) % 9) / 8 - 0.5)  # -20 % .. +20 %
    w = 2 * math.pi * pitch * (1 + step) / SAMPLE_RATE
    env = math.pi / count
    samples = array.array(
        "h",
        (
            int(AMPLITUDE * math.sin(env * i) * (0.7 * math.sin(w * i) + 0.3 * math.sin(2 * w * i)))
            for i in range(count)
        ),
    )
    return _little_endian(samples)


def tones(text: str, track: str, speed: float = 1.0) -> bytes:
    """``text`` as tones on ``track``'s pitch, 16-bit mono at :data:`SAMPLE_RATE`, paced like
    speech (a short pause between words)."""
    gap = bytes(2 * int(0.07 / speed * SAMPLE_RATE))
    return gap.join(_word_tone(word, PITCH[track], speed) for word in text[:MAX_SPOKEN_CHARS].split())


async def espeak(text: str, track: str, speed: float = 1.0) -> bytes | None:
    """``text`` spoken by espeak-ng in ``track``'s voice, 16-bit mono at :data:`SAMPLE_RATE`;
    None when espeak-ng is not installed or fails."""
    program = shutil.which("espeak-ng")
    if program is None or not text.strip():
        return None
    voice, pitch = ESPEAK_VOICE[track]
    wpm = str(min(int(WORDS_PER_MINUTE * speed), 450))
    try:
        proc = await asyncio.create_subprocess_exec(
            program, "--stdout", "-v", voice, "-p", pitch, "-s", wpm, "--", text[:MAX_SPOKEN_CHARS],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        wav, _ = await proc.communicate()
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    parsed = parse_wav(wav)
    if parsed is None:
        return None
    rate, pcm = parsed
    return resample(pcm, rate, SAMPLE_RATE)


def parse_wav(wav: bytes) -> tuple[int, bytes] | None:
    """The sample rate and the samples of a mono 16-bit PCM WAV; None for anything else.

    espeak-ng writes to a pipe, so its header cannot give the data's real length: the data
    chunk is taken to run to the end of what was written.
    """
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        return None
    at, rate = 12, None
    while at + 8 <= len(wav):
        name, size = wav[at : at + 4], struct.unpack_from("<I", wav, at + 4)[0]
        body = at + 8
        if name == b"fmt " and size >= 16:
            fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", wav, body)
            if (fmt, channels, bits) != (1, 1, 16):
                return None
        elif name == b"data":
            if rate is None:
                return None
            pcm = wav[body : min(body + size, len(wav))]
            return rate, pcm[: len(pcm) - len(pcm) % 2]
        at = body + size + size % 2
    return None


def resample(pcm: bytes, rate: int, to: int) -> bytes:
    """16-bit mono ``pcm`` from ``rate`` to ``to`` Hz by linear interpolation: enough for a
    demo's synthetic voice."""
    if rate == to or not pcm:
        return pcm
    src = array.array("h")
    src.frombytes(pcm)
    if sys.byteorder == "big":  # pragma: no cover - WAV and the wire are little-endian
        src.byteswap()
    last = len(src) - 1
    ratio = rate / to
    out = array.array("h", bytes(2 * int(len(src) / ratio)))
    for i in range(len(out)):
        pos = i * ratio
        j = int(pos)
        k = min(j + 1, last)
        out[i] = int(src[j] + (src[k] - src[j]) * (pos - j))
    return _little_endian(out)


def _little_endian(samples: array.array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover
        samples.byteswap()
    return samples.tobytes()


async def speech(text: str, track: str, speed: float = 1.0) -> bytes:
    """``text`` spoken: espeak-ng when installed, else tones."""
    return await espeak(text, track, speed) or tones(text, track, speed)


# -- streaming ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Track:
    """What one track of a call still has to say, and whether synthesis is under way."""

    queued: deque[bytes] = field(default_factory=deque)
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    last: asyncio.Task[None] | None = None  # the latest synthesis: the next one queues after it


class Voices:
    """Every simulated call's voices, streamed through one publisher at the pace they are heard.

    :meth:`speak` synthesizes an utterance (in a task: espeak-ng is a subprocess) and queues it
    on its track; :meth:`run` sends each track's next 20 ms every 20 ms; :meth:`hush` drops what a
    track has left to say; :meth:`forget` drops the call.
    """

    def __init__(self, pub: Publisher, speed: float = 1.0) -> None:
        self.pub = pub
        self.speed = speed
        self.calls: dict[str, dict[str, _Track]] = {}
        self.utterances: dict[str, Any] = {}  # call → the utterance being spoken last
        self.frames_sent = 0

    def speak(self, call_id: str, speaker: str, text: str) -> None:
        track = TRACK_OF.get(speaker)
        if track is None or not text.strip():
            return
        state = self.calls.setdefault(call_id, {}).setdefault(track, _Track())
        task = asyncio.get_running_loop().create_task(self._synthesize(state, text, track, state.last))
        state.pending.add(task)
        task.add_done_callback(state.pending.discard)
        state.last = task

    async def _synthesize(self, state: _Track, text: str, track: str, after: asyncio.Task[None] | None) -> None:
        pcm = await speech(text, track, self.speed)
        if after is not None:  # utterances of a track are said in the order they began
            await asyncio.wait([after])
        state.queued.extend(pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES))

    def hush(self, call_id: str, speaker: str) -> None:
        state = self.calls.get(call_id, {}).get(TRACK_OF.get(speaker, ""))
        if state is not None:
            for task in state.pending:
                task.cancel()
            state.queued.clear()

    def forget(self, call_id: str) -> None:
        for speaker in TRACK_OF:
            self.hush(call_id, speaker)
        self.calls.pop(call_id, None)
        self.utterances.pop(call_id, None)

    async def run(self) -> None:
        """Send the next 20 ms of every track that has something to say, every 20 ms."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += FRAME_SAMPLES / SAMPLE_RATE
            late = loop.time() - due
            if late > 0.1:  # the loop was held up: carry on from now rather than burst
                due = loop.time()
            await asyncio.sleep(max(due - loop.time(), 0))
            self.tick()

    def tick(self) -> None:
        for call_id, tracks in list(self.calls.items()):
            for track, state in tracks.items():
                if state.queued:
                    with contextlib.suppress(PublishError):  # closed: the simulation is ending
                        if self.pub.send_audio(call_id, track, state.queued.popleft(), sample_rate=SAMPLE_RATE):
                            self.frames_sent += 1

    def follow(self, call_id: str, kind: str, data: dict[str, Any], saying: Say | None) -> None:
        """Speak along with a simulated call's events: an utterance's first partial starts its
        speech (``saying``, the turn being played), an interrupted final stops it, the end of
        the call ends its voices."""
        if kind == "transcript.partial" and saying is not None and saying.speaker == data.get("speaker"):
            if self.utterances.get(call_id) != data.get("utterance_id"):
                self.utterances[call_id] = data.get("utterance_id")
                self.speak(call_id, saying.speaker, saying.text)
        elif kind == "transcript.final" and data.get("interrupted"):
            self.hush(call_id, str(data.get("speaker")))
        elif kind == "call.ended":
            self.forget(call_id)
