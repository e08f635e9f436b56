"""Live audio without I/O: the frame codec, `audio.format`, `listen`, a listener's buffer, and
the node's desk (docs/protocol.md, Live audio)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream import protocol as p
from callstream.audio import (
    MAX_PAYLOAD_BYTES,
    AudioFormat,
    binary_call_id,
    binary_frame,
    check_payload,
    encode_frame,
    parse_format,
    parse_frame,
)
from callstream.broker.memory import MemoryBroker
from callstream.listen_buffer import ListenBuffer
from callstream.server.audio_desk import FRAME, AudioDesk, read_relay, relay_message

PCM16 = AudioFormat("pcm_s16le", 16000)


def frame(track: int = 0, call_id: str = "call_1", ms: int = 0, payload: bytes = b"\x01\x02" * 160) -> bytes:
    return encode_frame(track, call_id, ms, payload)


def refusal(data: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as caught:
        parse_frame(data)
    return caught.value


# ---- the frame ----------------------------------------------------------------------------------


def test_a_frame_is_big_endian_with_its_call_id_in_ascii() -> None:
    data = encode_frame(1, "c:1", 0x01020304, b"\xaa\xbb")
    assert data == b"\x01\x01\x00\x03c:1\x01\x02\x03\x04\xaa\xbb"
    parsed = parse_frame(data)
    assert (parsed.version, parsed.track, parsed.call_id, parsed.ms, parsed.payload) == (1, 1, "c:1", 0x01020304, b"\xaa\xbb")
    assert parsed.raw == data


@given(
    track=st.sampled_from([0, 1]),
    call_id=st.from_regex(r"[A-Za-z0-9_.:\-]{1,128}", fullmatch=True),
    ms=st.integers(0, 2**32 - 1),
    payload=st.binary(min_size=1, max_size=MAX_PAYLOAD_BYTES),
)
def test_every_frame_encode_makes_parses_back_to_the_same_values(track: int, call_id: str, ms: int, payload: bytes) -> None:
    parsed = parse_frame(encode_frame(track, call_id, ms, payload))
    assert (parsed.track, parsed.call_id, parsed.ms, parsed.payload) == (track, call_id, ms, payload)


@given(st.binary(max_size=400))
def test_hostile_bytes_parse_or_get_a_protocol_error_and_nothing_else(data: bytes) -> None:
    refused: p.ProtocolError | None = None
    try:
        parsed = parse_frame(data)
    except p.ProtocolError as exc:
        refused = exc
    if refused is None:
        assert parsed.raw == data
    else:
        assert refused.code in (p.ErrorCode.INVALID_MESSAGE, p.ErrorCode.MESSAGE_TOO_LARGE)
        assert refused.message.startswith("audio frame: ")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "truncated header"),
        (b"\x01\x00\x00", "truncated header"),
        (b"\x02\x00\x00\x01c\x00\x00\x00\x00\x00\x00", "unknown version 2"),
        (b"\x01\x00\x00\x10call\x00\x00\x00\x00", "truncated header"),  # says 16 bytes of id, has 8
        (b"\x01\x00\x00\x02\xc3\xa9\x00\x00\x00\x00\x00\x00", "not ASCII"),
        (b"\x01\x00\x00\x02a \x00\x00\x00\x00\x00\x00", "call_id must be"),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", "call_id must be"),  # an empty call id
        (b"\x01\x02\x00\x01c\x00\x00\x00\x00\x00\x00", "track must be 0 (caller) or 1 (agent), not 2"),
        (b"\x01\x00\x00\x01c\x00\x00\x00\x00", "no payload"),
    ],
)
def test_a_malformed_frame_is_refused_saying_what_is_wrong(data: bytes, words: str) -> None:
    exc = refusal(data)
    assert exc.code == p.ErrorCode.INVALID_MESSAGE
    assert words in exc.message


def test_a_bad_track_names_its_call() -> None:
    assert refusal(b"\x01\x07\x00\x01c\x00\x00\x00\x00\x00\x00").call_id == "c"


def test_an_oversize_payload_is_message_too_large() -> None:
    head = encode_frame(0, "c", 0, b"\x00" * MAX_PAYLOAD_BYTES)
    assert parse_frame(head).payload == b"\x00" * MAX_PAYLOAD_BYTES
    exc = refusal(head + b"\x00\x00")
    assert exc.code == p.ErrorCode.MESSAGE_TOO_LARGE
    assert exc.call_id == "c"
    assert str(MAX_PAYLOAD_BYTES) in exc.message


def test_a_payload_of_part_of_a_sample_is_a_length_mismatch() -> None:
    odd = parse_frame(encode_frame(0, "c", 0, b"\x00\x01\x02"))
    with pytest.raises(p.ProtocolError, match="length mismatch") as caught:
        check_payload(PCM16, odd)
    assert caught.value.call_id == "c"
    check_payload(AudioFormat("mulaw", 8000), odd)  # one byte a sample: any length is whole


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((2, "c", 0, b"\x00"), "track"),
        ((0, "a b", 0, b"\x00"), "call_id"),
        ((0, "c", -1, b"\x00"), "ms"),
        ((0, "c", 2**32, b"\x00"), "ms"),
        ((0, "c", 0, b""), "payload"),
        ((0, "c", 0, b"\x00" * (MAX_PAYLOAD_BYTES + 1)), "payload"),
    ],
)
def test_encode_refuses_what_parse_would(args: tuple[Any, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        encode_frame(*args)


# ---- audio.format and listen ---------------------------------------------------------------------


def test_audio_format_gives_the_call_and_its_format() -> None:
    obj = {"type": "audio.format", "call_id": "c1", "codec": "mulaw", "sample_rate": 8000}
    assert parse_format(obj) == ("c1", AudioFormat("mulaw", 8000))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"call_id": "a b"}, "call_id"),
        ({"call_id": None}, "call_id"),
        ({"codec": "opus"}, "codec must be one of pcm_s16le, mulaw"),
        ({"codec": 1}, "codec"),
        ({"sample_rate": 44100}, "sample_rate must be one of 8000, 16000, 24000, 48000"),
        ({"sample_rate": "16000"}, "sample_rate"),
        ({"sample_rate": True}, "sample_rate"),
        ({"sample_rate": 16000.5}, "sample_rate"),
        ({"sample_rate": 16000.0}, "sample_rate"),
    ],
)
def test_a_bad_audio_format_is_refused(change: dict[str, Any], words: str) -> None:
    obj = {"type": "audio.format", "call_id": "c1", "codec": "pcm_s16le", "sample_rate": 16000, **change}
    with pytest.raises(p.ProtocolError, match=words) as caught:
        parse_format(obj)
    assert caught.value.code == p.ErrorCode.INVALID_MESSAGE


def test_listen_and_unlisten_name_one_call() -> None:
    assert p.parse_client_message('{"type":"listen","call_id":"c1"}') == p.Listen("c1")
    assert p.parse_client_message('{"type":"unlisten","call_id":"c1"}') == p.Unlisten("c1")
    for bad in ('{"type":"listen","call_id":"*"}', '{"type":"listen"}', '{"type":"unlisten","call_id":7}'):
        with pytest.raises(p.ProtocolError) as caught:
            p.parse_client_message(bad)
        assert caught.value.code == p.ErrorCode.INVALID_MESSAGE


# ---- a listener's buffer -------------------------------------------------------------------------


def test_a_full_buffer_drops_its_oldest_audio_first() -> None:
    dropped: list[int] = []
    buffer = ListenBuffer(300, dropped.append)
    for i in range(5):
        assert buffer.push(bytes([i]) * 100)
    assert buffer.pop_batch(10_000) == [bytes([2]) * 100, bytes([3]) * 100, bytes([4]) * 100]
    assert sum(dropped) == buffer.dropped == 2


def test_a_listener_that_loses_a_buffers_worth_without_catching_up_is_too_slow() -> None:
    buffer = ListenBuffer(300)
    results = [buffer.push(b"x" * 100) for _ in range(6)]  # 300 held, 300 dropped: still in
    assert all(results)
    assert not buffer.push(b"x" * 100)  # 400 dropped since it was last empty


def test_a_buffer_that_runs_empty_starts_counting_its_losses_again() -> None:
    buffer = ListenBuffer(300)
    for _ in range(6):
        assert buffer.push(b"x" * 100)
    buffer.pop_batch(10_000)
    for _ in range(6):
        assert buffer.push(b"x" * 100)


def test_a_buffer_never_pushed_to_is_empty_and_clears_without_counting_a_drop() -> None:
    dropped: list[int] = []
    buffer = ListenBuffer(300, dropped.append)
    assert len(buffer) == 0
    assert buffer.pop_batch(10_000) == []
    buffer.clear()
    assert (dropped, buffer.dropped, buffer.queued_bytes) == ([], 0, 0)
    assert buffer.push(b"x" * 100)
    buffer.clear()
    assert (dropped, buffer.dropped, len(buffer)) == ([1], 1, 0)


def test_a_listening_drops_only_its_own_calls_queued_audio() -> None:
    dropped: list[int] = []
    buffer = ListenBuffer(1 << 20, dropped.append)
    frames = [binary_frame(frame(call_id=c)) for c in ("c1", "c2", "c1")]
    frames.append(binary_frame(frame(call_id="c2", payload=bytes(MAX_PAYLOAD_BYTES))))  # a longer length
    for data in frames:
        assert buffer.push(data)
    buffer.drop_where(lambda data: binary_call_id(data) == b"c1")
    assert (dropped, buffer.dropped, buffer.queued_bytes) == ([2], 2, len(frames[1]) + len(frames[3]))
    assert buffer.pop_batch(1 << 20) == [frames[1], frames[3]]


def test_a_frame_too_short_to_hold_a_call_id_is_of_no_call() -> None:
    """A frame relayed by another node is not parsed again: a truncated one must not raise in
    the middle of a fan-out to this node's listeners."""
    for body in (b"", b"\x01", b"\x01\x00\x00"):
        assert binary_call_id(binary_frame(body)) == b""


# ---- between nodes ------------------------------------------------------------------------------


def test_a_relayed_message_carries_its_format_and_node() -> None:
    data = frame()
    assert read_relay(relay_message(FRAME, PCM16, "node-a", data)) == (FRAME, PCM16, "node-a", data)


@given(st.binary(max_size=64))
def test_a_garbled_relayed_message_is_ignored_not_raised(data: bytes) -> None:
    read_relay(data)


# ---- the desk -----------------------------------------------------------------------------------


class Heard:
    """A listener that keeps what the desk tells it."""

    def __init__(self) -> None:
        self.said: list[tuple[str, Any]] = []

    def audio_listening(self, call_id: str, fmt: AudioFormat) -> None:
        self.said.append(("listening", fmt))

    def audio_out(self, frame: bytes) -> None:
        self.said.append(("frame", frame))

    def audio_ended(self, call_id: str) -> None:
        self.said.append(("ended", call_id))


def ws_binary(payload: bytes) -> bytes:
    return bytes((0x82, 126)) + struct.pack("!H", len(payload)) + payload


def desk() -> AudioDesk:
    return AudioDesk(MemoryBroker(history_ttl_s=3600), lambda coro: coro.close())


def test_a_listener_before_the_format_hears_it_with_the_first_audio_then_each_change() -> None:
    node, ear = desk(), Heard()
    node.listen(ear, "acme", "c1")
    assert ear.said == []
    data = frame()
    node.frame("acme", "c1", PCM16, parse_frame(data))
    node.frame("acme", "c1", PCM16, parse_frame(data))
    mulaw = AudioFormat("mulaw", 8000)
    node.format("acme", "c1", mulaw)
    assert ear.said == [("listening", PCM16), ("frame", ws_binary(data)), ("frame", ws_binary(data)), ("listening", mulaw)]


def test_a_listener_after_the_format_hears_it_when_announced_once_and_no_other_accounts_call() -> None:
    node, ear, other = desk(), Heard(), Heard()
    node.format("acme", "c1", PCM16)
    node.listen(ear, "acme", "c1")
    node.listen(other, "globex", "c1")
    assert ear.said == []  # not before the socket knows the call has not ended
    for listener, account in ((ear, "acme"), (ear, "acme"), (other, "globex")):
        node.announce(listener, account, "c1")
    node.frame("acme", "c1", PCM16, parse_frame(frame()))
    assert [what for what, _ in ear.said] == ["listening", "frame"]
    assert other.said == []


def test_the_calls_end_ends_its_listens_and_unlisten_stops_the_audio() -> None:
    node, ear, gone = desk(), Heard(), Heard()
    node.listen(ear, "acme", "c1")
    node.listen(gone, "acme", "c1")
    node.unlisten(gone, "acme", "c1")
    node.ended("acme", "c1")
    node.frame("acme", "c1", PCM16, parse_frame(frame()))
    assert ear.said == [("ended", "c1")]
    assert gone.said == []
    assert node.listener_count() == 0
