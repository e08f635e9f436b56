"""Raw WebSocket frames against a real server: fragments, binary, huge, invalid UTF-8, control frames.

Frames are built by hand (tests/rawws.py) so malformed ones reach the wire. The server must answer
every input with a documented `error` or a proper close code (RFC 6455 §7.4: 1002 protocol error,
1007 invalid UTF-8, 1009 too large) and keep serving every other connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callstream import protocol as p
from tests.helpers import ServerProcess
from tests.rawws import BINARY, CLOSE, CONT, PING, PONG, TEXT, Frame, RawWebSocket, encode

ENDPOINTS = ["/v1/events", "/v1/ingest"]
# What a client may legitimately be told when it misbehaves at the frame level.
CLOSE_CODES = {1000, 1002, 1007, 1009, p.CloseCode.POLICY}
PING_MSG = b'{"type":"ping"}'


def opened(server: ServerProcess, key: str, path: str = "/v1/events") -> RawWebSocket:
    ws = RawWebSocket(server.port, f"{path}?token={key}")
    assert ws.status == 101
    return ws


def texts(frames: list[Frame]) -> list[dict[str, Any]]:
    return [orjson.loads(f.payload) for f in frames if f.opcode == TEXT]


def closed_with(frames: list[Frame]) -> int | None:
    return frames[-1].close_code if frames and frames[-1].opcode == CLOSE else None


def assert_still_serving(server: ServerProcess, key: str) -> None:
    """A new connection gets a pong: one client's bad frames never hurt the others."""
    ws = opened(server, key)
    try:
        ws.send(encode(TEXT, PING_MSG))
        reply = ws.read(5)
        assert reply is not None
        assert orjson.loads(reply.payload) == {"type": "pong"}
    finally:
        ws.close()


def run(server: ServerProcess, key: str, path: str, frames: list[bytes], quiet_s: float = 1.0) -> list[Frame]:
    ws = opened(server, key, path)
    try:
        for frame in frames:
            if not ws.send(frame):
                break
        return ws.frames_until_close(quiet_s)
    finally:
        ws.close()


@pytest.fixture(scope="module")
def canary(server: ServerProcess, api_key: str) -> Iterator[RawWebSocket]:
    """A connection open through the whole module: it must stay answering."""
    ws = opened(server, api_key)
    yield ws
    ws.close()


def test_fragmented_message_with_a_ping_in_between(server: ServerProcess, api_key: str) -> None:
    got = run(
        server,
        api_key,
        "/v1/events",
        [
            encode(TEXT, b'{"type"', fin=False),
            encode(PING, b"mid"),
            encode(CONT, b':"pi', fin=False),
            encode(CONT, b'ng"}'),
        ],
    )
    assert (got[0].opcode, got[0].payload) == (PONG, b"mid")  # control frames may interleave
    assert texts(got) == [{"type": "pong"}]


def test_a_multibyte_character_split_across_fragments_is_fine(server: ServerProcess, api_key: str) -> None:
    message = '{"type":"subscribe","call_id":"caf\u00e9"}'.encode()
    cut = message.index(b"\xc3") + 1
    got = run(
        server, api_key, "/v1/events", [encode(TEXT, message[:cut], fin=False), encode(CONT, message[cut:])]
    )
    assert closed_with(got) is None
    assert texts(got)[0]["data"]["code"] == p.ErrorCode.INVALID_MESSAGE  # a bad call id, not a bad frame


@pytest.mark.parametrize("path", ENDPOINTS)
def test_binary_frames_get_an_error_and_the_socket_stays(
    server: ServerProcess, api_key: str, path: str
) -> None:
    got = run(server, api_key, path, [encode(BINARY, b"\x00\xff binary"), encode(TEXT, PING_MSG)])
    assert texts(got)[0]["data"]["code"] == p.ErrorCode.INVALID_MESSAGE
    assert closed_with(got) is None


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "frames",
    [
        [encode(TEXT, b'{"type":"\xff"}')],
        [encode(TEXT, b'{"type":"\xc3', fin=False), encode(CONT, b'"}')],  # truncated character
        [encode(TEXT, b"\xed\xa0\x80")],  # a UTF-16 surrogate, not UTF-8
        [encode(CLOSE, struct.pack("!H", 1000) + b"\xff\xfe")],  # the close reason too
    ],
    ids=["bad-byte", "split-truncated", "surrogate", "close-reason"],
)
def test_invalid_utf8_closes_1007(
    server: ServerProcess, api_key: str, path: str, frames: list[bytes]
) -> None:
    assert closed_with(run(server, api_key, path, frames)) == 1007
    assert_still_serving(server, api_key)


def test_too_large_for_events_is_an_error_then_1009(server: ServerProcess, api_key: str) -> None:
    got = run(server, api_key, "/v1/events", [encode(TEXT, b'"' + b"x" * (64 * 1024 + 10) + b'"')])
    assert texts(got)[0]["data"]["code"] == p.ErrorCode.MESSAGE_TOO_LARGE
    assert closed_with(got) == 1009


def test_too_large_for_ingest_is_an_error_and_the_socket_stays(server: ServerProcess, api_key: str) -> None:
    got = run(server, api_key, "/v1/ingest", [encode(TEXT, b"x" * (1024 * 1024 + 10))], quiet_s=2)
    assert texts(got)[0]["data"]["code"] == p.ErrorCode.MESSAGE_TOO_LARGE
    assert closed_with(got) is None


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_frame_header_announcing_a_huge_payload_closes_1009(
    server: ServerProcess, api_key: str, path: str
) -> None:
    for length in (64 * 1024 * 1024, 1 << 40, (1 << 63) - 1):  # refused from the header alone
        assert closed_with(run(server, api_key, path, [encode(TEXT, b"", length=length)])) == 1009
    assert_still_serving(server, api_key)


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "frames",
    [
        [encode(CONT, b"nothing to continue")],
        [encode(TEXT, b"{", fin=False), encode(TEXT, b"}")],  # a new message inside a fragmented one
        [encode(TEXT, b"{}", rsv=4)],  # reserved bits without an extension
        [encode(TEXT, PING_MSG, mask=False)],  # clients must mask
        [encode(PING, b"x", fin=False)],  # control frames cannot be fragmented
        [encode(PING, b"x" * 126)],  # control payloads are at most 125 bytes
        [encode(0x3, b"x")],  # a reserved opcode
        [encode(0xB, b"x")],  # a reserved control opcode
        [encode(CLOSE, struct.pack("!H", 999))],  # an invalid close code
        [encode(CLOSE, b"\x03")],  # a one-byte close payload
        [encode(TEXT, b"{", fin=False), encode(CLOSE, struct.pack("!H", 1005))],
        # websockets treats any close inside a fragmented message as an incomplete message
        [encode(TEXT, b"{", fin=False), encode(CLOSE, struct.pack("!H", 1000))],
    ],
    ids=[
        "orphan-continuation",
        "text-inside-fragments",
        "rsv",
        "unmasked",
        "fragmented-ping",
        "long-ping",
        "opcode-3",
        "opcode-B",
        "close-999",
        "close-1-byte",
        "close-1005-mid-fragment",
        "close-1000-mid-fragment",
    ],
)
def test_protocol_violations_close_1002(
    server: ServerProcess, api_key: str, path: str, frames: list[bytes]
) -> None:
    assert closed_with(run(server, api_key, path, frames)) == 1002


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_clean_close_is_answered_with_1000(server: ServerProcess, api_key: str, path: str) -> None:
    got = run(server, api_key, path, [encode(TEXT, PING_MSG), encode(CLOSE, struct.pack("!H", 1000))])
    assert closed_with(got) == 1000


# ---- any sequence of frames ---------------------------------------------------------------------------

frame_strategy = st.tuples(
    st.sampled_from([TEXT, TEXT, TEXT, BINARY, CONT, CONT, PING, PONG, CLOSE, 0x3, 0xB]),  # opcode
    st.one_of(  # payload
        st.binary(max_size=200),
        st.sampled_from([PING_MSG, b'{"type":"subscribe","call_id":"c1"}', b"[]", b"\xc3", b"\xa9", b"\xff"]),
        st.text(max_size=80).map(str.encode),
    ),
    st.booleans(),  # fin
    st.sampled_from([0, 0, 0, 0, 1, 4]),  # rsv
    st.sampled_from([True, True, True, True, False]),  # mask
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ENDPOINTS), frames=st.lists(frame_strategy, min_size=1, max_size=8))
def test_any_frame_sequence_gets_documented_answers(
    server: ServerProcess, api_key: str, canary: RawWebSocket, path: str, frames: list[tuple[Any, ...]]
) -> None:
    wire = [encode(op, payload, fin=fin, rsv=rsv, mask=mask) for op, payload, fin, rsv, mask in frames]
    # A client's own close is echoed: its code (1005 when it gave none) is a fine answer too.
    echoed = {Frame(CLOSE, payload).close_code for op, payload, *_ in frames if op == CLOSE}
    got = run(server, api_key, path, wire, quiet_s=0.3)
    for frame in got:
        assert frame.opcode in (TEXT, PONG, CLOSE), frame
        if frame.opcode == TEXT:
            message = orjson.loads(frame.payload)
            assert message["type"] in {"pong", "error", "subscribed", "ack"}, message
            if message["type"] == "error":
                assert message["data"]["code"] in p.ERROR_CODES
                assert isinstance(message["data"]["message"], str)
    code = closed_with(got)
    assert code is None or code in CLOSE_CODES | echoed, code  # never 1011: no input fails the server
    canary.send(encode(TEXT, PING_MSG))
    reply = canary.read(5)
    assert reply is not None
    assert orjson.loads(reply.payload) == {"type": "pong"}
