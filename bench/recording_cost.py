"""In-process cost of recording (`--record`, docs/recordings.md): µs of CPU per audio frame.

`python -m bench.recording_cost` feeds 20 ms frames of both tracks, stamped as a live producer
stamps them, to `recording.Assembler` (16 kHz PCM and 8 kHz mu-law, arriving in real time),
then to a node's `Recordings` (assembler, queueing and the writer thread's file writes, into a
temporary folder) for 200 calls at once, as fast as it takes them (so each call holds up to its
10 s before writing), and prints µs per frame (median of several repeats for the assembler) and
the share of one core that 200 calls of 16 kHz audio on both tracks (20,000 frames a second)
would take.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from callstream.recording import Assembler
from callstream.server.recordings import Recordings

FRAMES_PER_S = 200 * 2 * 50  # 200 calls, two tracks, 20 ms frames


@dataclass(frozen=True, slots=True)
class Fmt:
    codec: str
    sample_rate: int


@dataclass(frozen=True, slots=True)
class Frame:
    track: int
    ms: int
    payload: bytes


def frames(fmt: Fmt, seconds: int) -> list[Frame]:
    """Both tracks' 20 ms frames, interleaved in time, the agent speaking every other second."""
    per = fmt.sample_rate // 50
    tone = [round(8000 * math.sin(2 * math.pi * 440 * i / fmt.sample_rate)) for i in range(per)]
    payload = struct.pack(f"<{per}h", *tone) if fmt.codec == "pcm_s16le" else bytes(i * 7 % 256 for i in range(per))
    out = []
    for ms in range(0, seconds * 1000, 20):
        out.append(Frame(0, ms, payload))
        if (ms // 1000) % 2:
            out.append(Frame(1, ms, payload))
    return out


def assembler_us(fmt: Fmt, repeats: int = 7) -> float:
    batch = frames(fmt, 60)
    times = []
    for _ in range(repeats):
        assembler = Assembler(fmt.sample_rate)
        t0 = time.process_time()
        for frame in batch:
            assembler.feed(fmt, frame, frame.ms)
        assembler.finish()
        times.append((time.process_time() - t0) / len(batch) * 1e6)
    return statistics.median(times)


async def recorder_us(fmt: Fmt, calls: int = 200, seconds: int = 10) -> float:
    """Every frame of `calls` calls through `Recordings.frame` (the writer thread's CPU included:
    process time counts every thread), then each call ended and the files closed."""
    batch = frames(fmt, seconds)
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as root:
        recordings = Recordings(Path(root), enabled=True)
        t0 = time.process_time()
        for frame in batch:
            for n in range(calls):
                recordings.frame("bench", f"call_{n}", fmt, frame)
            recordings.tick(time.monotonic())  # the node's once-a-second flush, here once a frame
        for n in range(calls):
            recordings.end("bench", f"call_{n}")
        await recordings.close()
        return (time.process_time() - t0) / (len(batch) * calls) * 1e6


def main() -> None:
    pcm16, mulaw8 = Fmt("pcm_s16le", 16000), Fmt("mulaw", 8000)
    for fmt in (pcm16, mulaw8):
        us = assembler_us(fmt)
        print(f"Assembler.feed, {fmt.codec} {fmt.sample_rate} Hz: {us:.1f} µs a frame")
    us = statistics.median(asyncio.run(recorder_us(pcm16)) for _ in range(3))
    share = us * FRAMES_PER_S / 1e6
    print(f"Recordings.frame, 200 calls, pcm_s16le 16 kHz, files written: {us:.1f} µs a frame "
          f"= {share:.0%} of a core at {FRAMES_PER_S:,} frames/s")


if __name__ == "__main__":
    main()
