"""A call's recording, without I/O: audio frames in, the bytes of a 2-channel WAV out.

`Assembler` takes a call's frames (docs/protocol.md, Live audio: track 0 caller / 1 agent, the ms since the
call's first audio, a payload in the call's codec) in the order they arrive, each with the time
it arrived, and returns what to append to the file: 16-bit little-endian PCM, caller left, agent right, at the rate of the
first frame it recorded. `wav_header` gives the 44 bytes in front, written again with the
final sizes when the file is closed (`docs/recordings.md`).

Where a frame goes (`Limits` holds each figure):
- at its timestamp, `ms × rate / 1000` samples into the call; a frame that starts within
  `snap_ms` (and half its own length) of where its track's last frame ended is placed right
  there instead, so timestamp jitter and rounding never put clicks (a tiny gap or overlap) into
  a contiguous stream, while a repeat of the last frame still lands on it;
- a track with nothing at a point is silent there (a gap, a track that never sent);
- a frame that overlaps audio still held (a duplicate, an overlap, one out of order) replaces
  it: the last frame to arrive wins;
- what is written out cannot change: the part of a frame before that point is dropped. Audio is
  written out once it is `reorder_ms` behind the live time: where a track sent in real time is
  now, from the frames' ms against the times they arrived (the latest any frame came, relative
  to its ms, sets it). A track sent faster than real time (a TTS burst) is ahead of it and
  waits for the other; a track that went quiet holds nothing back, since its next frames come
  at the live time. It leaves in pieces of `WRITE_MS` or more, and never more than
  `max_held_ms` is held, so memory per call is bounded by that much audio plus one frame and a
  piece (a burst further ahead than that has the other track's stretch written as it is,
  silent where it had nothing yet);
- hostile timestamps: a frame more than `max_gap_ms` beyond the call's furthest audio is moved
  back to `max_gap_ms` after it, and every later frame of the call with it (a jump never makes
  more than `max_gap_ms` of silence); nothing is recorded past `max_duration_ms`;
- a frame at another sample rate than the recording's is left out (its stretch is silence); a
  codec change at the same rate is just decoded (every codec becomes 16-bit PCM).
Silence is returned as a count of zero bytes, never as a buffer: a gap costs no memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "CODECS",
    "FRAME_BYTES",
    "HEADER_BYTES",
    "RATES",
    "WRITE_MS",
    "Assembler",
    "AudioFormatLike",
    "AudioFrameLike",
    "Chunk",
    "Limits",
    "decode",
    "read_header",
    "ulaw_to_linear",
    "wav_header",
]

CODECS: Final = ("pcm_s16le", "mulaw")
RATES: Final = (8000, 16000, 24000, 48000)
CHANNELS: Final = 2
FRAME_BYTES: Final = 4  # one stereo sample: two 16-bit channels
HEADER_BYTES: Final = 44
WRITE_MS: Final = 100  # audio is returned in pieces of at least this much (but at `finish`)
MAX_DATA_BYTES: Final = 0xFFFFFFFF - 36  # a RIFF size is 32 bits

Chunk = bytes | int  # audio to append, or a count of zero bytes (silence) to append


class AudioFormatLike(Protocol):
    """What the recorder reads of a call's declared format (`audio.AudioFormat` fits)."""

    @property
    def codec(self) -> str: ...
    @property
    def sample_rate(self) -> int: ...


class AudioFrameLike(Protocol):
    """What the recorder reads of a frame (`audio.AudioFrame` fits)."""

    @property
    def track(self) -> int: ...
    @property
    def ms(self) -> int: ...
    @property
    def payload(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """How frames are placed and bounded (the module docstring says what each does)."""

    snap_ms: int = 10
    reorder_ms: int = 200
    max_held_ms: int = 10_000
    max_gap_ms: int = 60_000
    max_duration_ms: int = 4 * 3600 * 1000  # 2.8 GB at 48 kHz: within a WAV's 4 GiB


# ---- G.711 mu-law ---------------------------------------------------------------------------


def ulaw_to_linear(code: int) -> int:
    """One G.711 mu-law byte as a 16-bit sample (the ITU-T table: 0xFF and 0x7F are 0)."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - magnitude if code & 0x80 else magnitude - 0x84


# Two translation tables (low byte, high byte of each decoded sample), so decoding a payload is
# two `bytes.translate` calls and two slice assignments, all in C.
_ULAW = [ulaw_to_linear(c) & 0xFFFF for c in range(256)]
_ULAW_LOW = bytes(s & 0xFF for s in _ULAW)
_ULAW_HIGH = bytes(s >> 8 for s in _ULAW)


def decode(codec: str, payload: bytes) -> bytes:
    """A payload as 16-bit little-endian PCM (an odd trailing byte of PCM is dropped)."""
    if codec == "pcm_s16le":
        return payload[: len(payload) & ~1]
    if codec == "mulaw":
        out = bytearray(2 * len(payload))
        out[0::2] = payload.translate(_ULAW_LOW)
        out[1::2] = payload.translate(_ULAW_HIGH)
        return bytes(out)
    raise ValueError(f"unknown codec {codec!r}; one of {', '.join(CODECS)}")


# ---- the WAV container ----------------------------------------------------------------------

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_header(sample_rate: int, data_bytes: int) -> bytes:
    """The 44-byte header of a 2-channel 16-bit PCM WAV holding `data_bytes` of samples."""
    return _HEADER.pack(
        b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, CHANNELS, sample_rate,
        sample_rate * FRAME_BYTES, FRAME_BYTES, 16, b"data", data_bytes,
    )  # fmt: skip


def read_header(header: bytes) -> int | None:
    """The sample rate of a header `wav_header` wrote; None for anything else."""
    if len(header) < HEADER_BYTES:
        return None
    riff, _, wave, fmt, fmt_size, pcm, channels, rate, _, align, bits, data, _ = _HEADER.unpack(
        header[:HEADER_BYTES]
    )
    ours = (riff, wave, fmt, fmt_size, pcm, channels, align, bits, data) == (
        b"RIFF", b"WAVE", b"fmt ", 16, 1, CHANNELS, FRAME_BYTES, 16, b"data",
    )  # fmt: skip
    return rate if ours and rate in RATES else None


# ---- the assembler --------------------------------------------------------------------------


class _Track:
    """One channel's samples not written out yet: `held` starts at the assembler's `written`."""

    __slots__ = ("end", "held")

    def __init__(self) -> None:
        self.held = bytearray()  # 16-bit LE samples
        self.end: int | None = None  # the sample after its furthest frame; None: no audio yet


class Assembler:
    """One call's frames in, WAV data out (`feed`, then `finish`); see the module docstring.

    `written` is how many stereo samples have been returned; `start` resumes a file that
    already holds that many (frames before it are dropped).
    """

    def __init__(self, sample_rate: int, *, limits: Limits | None = None, start: int = 0) -> None:
        if sample_rate not in RATES:
            raise ValueError(f"sample rate {sample_rate} is not one of {RATES}")
        self.sample_rate = sample_rate
        per_ms = sample_rate // 1000
        limits = limits or Limits()
        self._snap = limits.snap_ms * per_ms
        self._reorder = limits.reorder_ms * per_ms
        self._max_held = limits.max_held_ms * per_ms
        self._max_gap = limits.max_gap_ms * per_ms
        self._max = min(limits.max_duration_ms * per_ms, MAX_DATA_BYTES // FRAME_BYTES)
        self._per_ms = per_ms
        self._tracks = (_Track(), _Track())
        self._shift = 0  # samples taken off every timestamp since a capped jump
        self._origin: int | None = None  # the most any frame's arrival trailed its position
        self._end = 0  # the sample after the furthest frame of either track
        self._batch = WRITE_MS * per_ms
        self.written = start
        self.dropped_frames = 0  # wholly before what was written out, past the end, or another rate

    @property
    def data_bytes(self) -> int:
        return self.written * FRAME_BYTES

    def feed(self, fmt: AudioFormatLike, frame: AudioFrameLike, arrived_ms: int) -> list[Chunk]:
        """Place one frame that arrived at `arrived_ms` (any monotonic clock, in ms); returns
        the data now final, in file order."""
        if fmt.sample_rate != self.sample_rate or fmt.codec not in CODECS or frame.track not in (0, 1):
            self.dropped_frames += 1
            return []
        samples = decode(fmt.codec, frame.payload)
        track = self._tracks[frame.track]
        pos = self._position(track, frame.ms, len(samples) // 2)
        n = min(len(samples) // 2, self._max - pos)
        now = arrived_ms * self._per_ms
        self._origin = now - pos if self._origin is None else max(self._origin, now - pos)
        final = max(now - self._origin - self._reorder, max(pos + n, self._end) - self._max_held)
        out = self._write_out(min(pos, final))  # a gap before the frame leaves as a count, not zeros
        cut = max(0, self.written - pos)
        if n - cut <= 0:
            self.dropped_frames += 1
            return out
        self._hold(track, pos + cut, samples[2 * cut : 2 * n])
        return out + self._write_out(final)

    def finish(self) -> list[Chunk]:
        """Everything still held, as the end of the file."""
        return self._write_out(self._end, batch=1)

    def _position(self, track: _Track, ms: int, samples: int) -> int:
        pos = ms * self._per_ms - self._shift
        furthest = max(self.written, self._end)
        if pos > furthest + self._max_gap:
            self._shift += pos - (furthest + self._max_gap)
            pos = furthest + self._max_gap
        if track.end is not None and abs(pos - track.end) <= min(self._snap, samples // 2):
            pos = track.end
        return pos

    def _hold(self, track: _Track, pos: int, samples: bytes) -> None:
        offset = 2 * (pos - self.written)
        if len(track.held) < offset:
            track.held.extend(bytes(offset - len(track.held)))
        track.held[offset : offset + len(samples)] = samples
        end = pos + len(samples) // 2
        if track.end is None or end > track.end:
            track.end = end
            self._end = max(self._end, end)

    def _write_out(self, upto: int, batch: int | None = None) -> list[Chunk]:
        """Return samples up to `upto` (stereo, silence where a track has none) and forget them;
        nothing until that is at least `batch` samples (default `WRITE_MS`): fewer, larger pieces."""
        count = min(upto, self._max) - self.written
        if count < (self._batch if batch is None else max(batch, 1)):
            return []
        left, right = (_take(t.held, count) for t in self._tracks)
        self.written += count
        held = max(len(left), len(right)) // 2
        out: list[Chunk] = [_interleave(left, right)] if held else []
        if count > held:
            out.append((count - held) * FRAME_BYTES)
        return out


def _take(held: bytearray, count: int) -> bytes:
    taken = bytes(held[: 2 * count])
    del held[: 2 * count]
    return taken


def _interleave(left: bytes, right: bytes) -> bytes:
    """Two mono 16-bit LE channels as one stereo stream (the shorter padded with silence)."""
    size = max(len(left), len(right))
    if len(left) != len(right):
        left, right = left.ljust(size, b"\0"), right.ljust(size, b"\0")
    out = bytearray(2 * size)
    out[0::4], out[1::4] = left[0::2], left[1::2]
    out[2::4], out[3::4] = right[0::2], right[1::2]
    return bytes(out)
