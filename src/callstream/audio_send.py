"""A producer's side of a call's live audio (docs/protocol.md, Live audio), without I/O.

:class:`~callstream.Publisher` hands each chunk of PCM to the call's :class:`AudioCall`, which
checks it, cuts it into frames of at most :data:`FRAME_MS` and stamps each with the ``ms`` a
listener and a recording place it at. The stamps are what keep the caller's and the agent's
tracks aligned, so they follow two rules:

- **Samples, not the clock, advance a track.** A track's next frame starts where its previous
  one ended (the samples sent so far), so the jitter of the loop that delivers audio never
  shows as gaps or overlaps. A text-to-speech engine that delivers faster than real time keeps
  its audio contiguous too.
- **The clock places a track that starts or resumes.** The call's first audio is ``ms`` 0;
  a track's first chunk, or its first after a silence (the track fell more than
  :data:`RESYNC_MS` behind the clock: nothing was sent for it meanwhile), starts at the time
  since then, so an agent answering two seconds after the caller spoke is heard two seconds
  later. A track first sent within :data:`START_MS` of the call's first audio starts at 0
  with it: two tracks sent together stay aligned however the sender's loop was delayed between
  them, and a track placed that early still has most of :data:`RESYNC_MS` for its jitter.
"""

from __future__ import annotations

from typing import Final

import orjson

from callstream.audio import CODECS, MAX_MS, SAMPLE_RATES, TRACK_AGENT, TRACK_CALLER, encode_frame
from callstream.events import is_valid_call_id

__all__ = ["FRAME_MS", "RESYNC_MS", "START_MS", "TRACKS", "AudioCall", "check_format", "track_number"]

FRAME_MS: Final = 20  # a frame's longest duration: what telephony and WebRTC send
RESYNC_MS: Final = 200  # a track further behind the clock than this was silent: it jumps ahead
START_MS: Final = 100  # a track first sent this soon after the call's first audio starts at 0
TRACKS: Final[dict[str, int]] = {"caller": TRACK_CALLER, "agent": TRACK_AGENT}


def track_number(track: str | int) -> int:
    """The wire number of ``track``: ``"caller"`` (or 0), ``"agent"`` (or 1); ValueError else."""
    if isinstance(track, str) and track in TRACKS:
        return TRACKS[track]
    if isinstance(track, int) and not isinstance(track, bool) and track in TRACKS.values():
        return track
    msg = f"track must be 'caller' (0) or 'agent' (1), got {track!r}"
    raise ValueError(msg)


def check_format(codec: str, sample_rate: int) -> None:
    """Refuse a codec or rate the protocol does not list (ValueError)."""
    if codec not in CODECS:
        msg = f"codec must be one of {', '.join(sorted(CODECS))}, got {codec!r}"
        raise ValueError(msg)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate not in SAMPLE_RATES:
        msg = f"sample_rate must be one of {', '.join(map(str, sorted(SAMPLE_RATES)))}, got {sample_rate!r}"
        raise ValueError(msg)


def check_call_id(call_id: str) -> None:
    if not is_valid_call_id(call_id):
        msg = "call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -"
        raise ValueError(msg)


class AudioCall:
    """One call's audio: its format (fixed by its first chunk) and where each track is."""

    __slots__ = ("_cursor", "_started", "announced", "call_id", "codec", "format_message", "sample_rate")

    def __init__(self, call_id: str, codec: str, sample_rate: int, now: float) -> None:
        check_call_id(call_id)
        check_format(codec, sample_rate)
        self.call_id = call_id
        self.codec = codec
        self.sample_rate = sample_rate
        self.format_message = orjson.dumps(
            {"type": "audio.format", "call_id": call_id, "codec": codec, "sample_rate": sample_rate}
        )
        self.announced = 0  # the connection the format was last sent on (0: none yet)
        self._started = now  # the call's first audio: ms 0
        self._cursor: dict[int, int] = {}  # track → samples from ms 0 to the end of what was sent

    def frames(self, track: int, pcm: bytes | bytearray | memoryview, now: float) -> list[bytes]:
        """The frames of one chunk of ``track``, received at ``now`` (loop seconds).

        The chunk is checked before anything moves: ValueError for a partial sample.
        """
        width = CODECS[self.codec]
        data = memoryview(pcm).cast("B")
        if len(data) % width:
            msg = f"{self.codec} audio has {width} bytes a sample; got {len(data)} bytes"
            raise ValueError(msg)
        if not data:
            return []
        rate = self.sample_rate
        clock = round((now - self._started) * rate)
        cursor = self._cursor.get(track)
        if cursor is None:  # the track's first chunk: with the call's first audio, or when it came
            cursor = 0 if clock <= START_MS * rate // 1000 else clock
        elif clock - cursor > RESYNC_MS * rate // 1000:
            cursor = max(clock, 0)
        step = FRAME_MS * rate // 1000 * width
        out: list[bytes] = []
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            out.append(encode_frame(track, self.call_id, cursor * 1000 // rate % (MAX_MS + 1), bytes(piece)))
            cursor += len(piece) // width
        self._cursor[track] = cursor
        return out

    def check(self, codec: str, sample_rate: int) -> None:
        """Refuse a chunk in another format than the call's (ValueError): a call has one."""
        if (codec, sample_rate) != (self.codec, self.sample_rate):
            msg = (
                f"call {self.call_id} sends {self.codec} at {self.sample_rate} Hz; "
                f"got {codec} at {sample_rate} Hz (resample before sending)"
            )
            raise ValueError(msg)
