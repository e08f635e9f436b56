"""Live call audio, sans-I/O: the `audio.format` message and the binary frame (docs/protocol.md,
Live audio).

No sockets, no awaits: bytes in, a typed value or a `ProtocolError` out, so the ingest socket,
the events socket, the recorder and the clients share one codec and tests can feed it anything.

A frame, all integers big-endian (network order)::

    u8 version (1) | u8 track (0 caller, 1 agent) | u16 length of call_id | call_id (ASCII)
    | u32 ms since the call's first audio | payload

The payload is raw audio in the call's declared format (`AudioFormat`): whole samples, mono,
at most `MAX_PAYLOAD_BYTES`. A frame carries no codec of its own, so one `audio.format` per call
(sent before its first frame, and again to change it) tells every listener how to play it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

from callstream.events import BINARY_OPCODE, is_valid_call_id, server_frame
from callstream.protocol import ErrorCode, ProtocolError, server_message

__all__ = [
    "CODECS",
    "MAX_PAYLOAD_BYTES",
    "SAMPLE_RATES",
    "TRACK_AGENT",
    "TRACK_CALLER",
    "VERSION",
    "AudioFormat",
    "AudioFrame",
    "check_payload",
    "encode_frame",
    "listening_message",
    "parse_format",
    "parse_frame",
    "unlistened_message",
]

VERSION: Final = 1
TRACK_CALLER: Final = 0
TRACK_AGENT: Final = 1
Codec = Literal["pcm_s16le", "mulaw"]
CODECS: Final[dict[str, int]] = {"pcm_s16le": 2, "mulaw": 1}  # codec → bytes per sample
SAMPLE_RATES: Final = (8000, 16000, 24000, 48000)
#: 100 ms of the widest format (48 kHz, 16-bit, mono). A producer sends audio as it is heard, in
#: frames of 10-100 ms; a larger frame would hold every listener's audio back by as much.
MAX_PAYLOAD_BYTES: Final = 9600
MAX_MS: Final = 2**32 - 1

_HEAD: Final = struct.Struct(">BBH")  # version, track, length of call_id
_MS: Final = struct.Struct(">I")
#: The largest frame there can be: the head, a call id of 128 characters, ms and the payload.
MAX_FRAME_BYTES: Final = _HEAD.size + 128 + _MS.size + MAX_PAYLOAD_BYTES


def _invalid(message: str, call_id: str | None = None) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message, call_id)


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """What a call's frames hold: `codec` (`pcm_s16le`: signed 16-bit little-endian PCM;
    `mulaw`: G.711 µ-law, one byte a sample) at `sample_rate` Hz, mono per track."""

    codec: Codec
    sample_rate: int

    @property
    def sample_bytes(self) -> int:
        return CODECS[self.codec]

    def data(self) -> dict[str, Any]:
        """The `data` of the `listening` message a listener receives."""
        return {"codec": self.codec, "sample_rate": self.sample_rate}


def parse_format(obj: dict[str, Any]) -> tuple[str, AudioFormat]:
    """`{"type":"audio.format","call_id":C,"codec":…,"sample_rate":…}` → (C, its format)."""
    call_id = obj.get("call_id")
    if not is_valid_call_id(call_id):
        raise _invalid("audio.format: call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    assert isinstance(call_id, str)
    codec = obj.get("codec")
    if not isinstance(codec, str) or codec not in CODECS:
        raise _invalid(f"audio.format: codec must be one of {', '.join(CODECS)}", call_id)
    rate = obj.get("sample_rate")
    # An integer: 16000.0 equals 16000 but would reach listeners, and the relay's packing, as a float.
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SAMPLE_RATES:
        rates = ", ".join(map(str, SAMPLE_RATES))
        raise _invalid(f"audio.format: sample_rate must be one of {rates}", call_id)
    return call_id, AudioFormat(codec, rate)  # type: ignore[arg-type]  # checked against CODECS


class AudioFrame(NamedTuple):
    """One parsed frame. `raw` is the whole frame as it came: relayed to listeners unchanged.
    A named tuple: one is built for every frame a node takes (bench/README.md, audio-frame-tuple)."""

    version: int
    track: int
    call_id: str
    ms: int
    payload: bytes
    raw: bytes

    @property
    def head_bytes(self) -> int:
        return len(self.raw) - len(self.payload)


def parse_frame(data: bytes) -> AudioFrame:
    """Parse one binary frame; ProtocolError (`invalid_message`, or `message_too_large` past
    `MAX_PAYLOAD_BYTES`) naming what is wrong, with the call id once it could be read."""
    if len(data) < _HEAD.size:
        raise _invalid(f"audio frame: truncated header ({len(data)} bytes; a frame starts with 4)")
    version, track, id_len = _HEAD.unpack_from(data)
    if version != VERSION:
        raise _invalid(f"audio frame: unknown version {version} (this server speaks version {VERSION})")
    end_of_id = _HEAD.size + id_len
    if len(data) < end_of_id + _MS.size:
        raise _invalid(f"audio frame: truncated header (call_id of {id_len} bytes and ms need {end_of_id + _MS.size}, got {len(data)})")
    try:
        call_id = data[_HEAD.size : end_of_id].decode("ascii")
    except UnicodeDecodeError:
        raise _invalid("audio frame: call_id is not ASCII") from None
    if not is_valid_call_id(call_id):
        raise _invalid("audio frame: call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    if track not in (TRACK_CALLER, TRACK_AGENT):
        raise _invalid(f"audio frame: track must be 0 (caller) or 1 (agent), not {track}", call_id)
    (ms,) = _MS.unpack_from(data, end_of_id)
    payload = bytes(data[end_of_id + _MS.size :])
    if len(payload) > MAX_PAYLOAD_BYTES:
        message = f"audio frame: payload of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES} (100 ms at 48 kHz)"
        raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, message, call_id)
    if not payload:
        raise _invalid("audio frame: no payload (a frame carries at least one sample)", call_id)
    return AudioFrame(version, track, call_id, ms, payload, bytes(data))


def check_payload(fmt: AudioFormat, frame: AudioFrame) -> None:
    """The payload holds whole samples of `fmt` (a length mismatch: `invalid_message`)."""
    if len(frame.payload) % fmt.sample_bytes:
        message = (
            f"audio frame: length mismatch: {len(frame.payload)} bytes is not a whole number of "
            f"{fmt.codec} samples ({fmt.sample_bytes} bytes each)"
        )
        raise _invalid(message, frame.call_id)


def encode_frame(track: int, call_id: str, ms: int, payload: bytes) -> bytes:
    """The binary frame `parse_frame` reads (ValueError for what it would refuse)."""
    if track not in (TRACK_CALLER, TRACK_AGENT):
        raise ValueError("track must be 0 (caller) or 1 (agent)")
    if not is_valid_call_id(call_id):
        raise ValueError("call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"ms must be between 0 and {MAX_MS}")
    if not 0 < len(payload) <= MAX_PAYLOAD_BYTES:
        raise ValueError(f"a payload holds 1 to {MAX_PAYLOAD_BYTES} bytes")
    name = call_id.encode("ascii")
    return _HEAD.pack(VERSION, track, len(name)) + name + _MS.pack(ms) + payload


# ---- server → listener messages --------------------------------------------------------------


def listening_message(call_id: str, fmt: AudioFormat) -> bytes:
    """`listening`: the call's audio follows, in `fmt` (sent again when the format changes)."""
    return server_message("listening", call_id, fmt.data())


def unlistened_message(call_id: str, reason: str | None = None) -> bytes:
    """`unlistened`: no more audio of the call (after `unlisten`, or `reason: "ended"`)."""
    data: dict[str, Any] = {"call_id": call_id}
    if reason is not None:
        data["reason"] = reason
    return server_message("unlistened", call_id, data)


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented BINARY WebSocket frame (RFC 6455 §5.2) holding `payload`:
    built once per audio frame, the same bytes for every listener."""
    return server_frame(payload, BINARY_OPCODE)


def _payload_offset(frame: bytes) -> int:
    """Where the payload starts in a frame built by `binary_frame` (after its length)."""
    marker = frame[1]
    return 2 if marker < 126 else 4 if marker == 126 else 10


def binary_payload(frame: bytes) -> bytes:
    """The payload inside a frame built by `binary_frame` (for the plain-ASGI fallback)."""
    return frame[_payload_offset(frame) :]


def binary_call_id(frame: bytes) -> bytes:
    """The call id (ASCII) of the audio frame inside a frame built by `binary_frame`: which call
    a listener's queued audio is of, read without copying the payload; `b""` for a frame too
    short to hold one (relayed frames are not parsed again)."""
    offset = _payload_offset(frame) + _HEAD.size
    if len(frame) < offset:
        return b""
    (length,) = struct.unpack_from(">H", frame, offset - 2)
    return frame[offset : offset + length]
