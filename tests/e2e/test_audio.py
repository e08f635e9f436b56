"""Live audio on a real server (docs/protocol.md, Live audio): a producer's frames reach every
listener byte for byte, every malformed frame gets its error, listening takes the scope and
hears no other account, at most four calls per socket, and a slow listener loses its oldest
audio while its events still arrive, then is cut off."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from callstream.audio import encode_frame, parse_frame
from tests.helpers import Cluster, ServerProcess, ended, final, key_of, publish, recv, send
from tests.rawws import BINARY, TEXT, RawWebSocket, encode

FORMAT = {"type": "audio.format", "codec": "pcm_s16le", "sample_rate": 16000}


def call() -> str:
    return f"audio_{uuid.uuid4().hex[:10]}"


def pcm(n: int, size: int = 640) -> bytes:
    """20 ms of 16 kHz 16-bit audio, different for each n."""
    return bytes((n + i) % 256 for i in range(size))


async def ingest(server: ServerProcess, key: str, **options: Any) -> ClientConnection:
    return await connect(f"{server.ws_url}/v1/ingest?token={key}", **options)


async def events(server: ServerProcess, key: str) -> ClientConnection:
    return await connect(f"{server.ws_url}/v1/events?token={key}")


async def next_text(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next text message, skipping audio frames."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - loop.time()))
        if isinstance(raw, str):
            message: dict[str, Any] = orjson.loads(raw)
            return message


async def next_binary(ws: ClientConnection, timeout: float = 5.0) -> bytes:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, bytes), raw
    return raw


async def read_both(ws: ClientConnection, frames: int, texts: int = 1) -> tuple[list[bytes], list[dict[str, Any]]]:
    """The next `frames` audio frames and `texts` text messages, however they interleave (a
    listener's events may overtake its audio, never the reverse within each)."""
    heard: list[bytes] = []
    said: list[dict[str, Any]] = []
    while len(heard) < frames or len(said) < texts:
        raw = await asyncio.wait_for(ws.recv(), 5.0)
        if isinstance(raw, bytes):
            heard.append(raw)
        else:
            said.append(orjson.loads(raw))
    return heard, said


async def quiet(ws: ClientConnection) -> None:
    """Nothing is waiting on the socket: a ping's pong comes first."""
    await send(ws, {"type": "ping"})
    assert await recv(ws) == {"type": "pong"}


async def test_a_listener_hears_both_tracks_byte_for_byte_beside_the_calls_events(server: ServerProcess) -> None:
    key, call_id = key_of(server), call()
    async with await events(server, key) as ear, await ingest(server, key) as mouth:
        await send(ear, {"type": "listen", "call_id": call_id})  # before the call starts
        await send(ear, {"type": "subscribe", "call_id": call_id})
        assert (await recv(ear))["type"] == "subscribed"
        await send(mouth, {**FORMAT, "call_id": call_id})
        assert await recv(ear) == {
            "type": "listening",
            "call_id": call_id,
            "data": {"codec": "pcm_s16le", "sample_rate": 16000},
        }
        sent = []
        for n in range(25):
            for track in (0, 1):
                sent.append(encode_frame(track, call_id, n * 20, pcm(2 * n + track)))
                await mouth.send(sent[-1])
        await send(mouth, {**final("hello"), "call_id": call_id, "ref": 1})
        heard, texts = await read_both(ear, len(sent))
        assert heard == sent
        assert [m["type"] for m in texts] == ["transcript.final"]
        assert (await recv(mouth))["type"] == "ack"
        # Audio is never stored: the call's history holds its one event.
        stored = httpx.get(f"{server.url}/v1/calls/{call_id}/events", headers={"Authorization": f"Bearer {key}"})
        assert [e["type"] for e in stored.json()["events"]] == ["transcript.final"]

        # A new format is announced before the first frame in it.
        await send(mouth, {"type": "audio.format", "call_id": call_id, "codec": "mulaw", "sample_rate": 8000})
        assert (await recv(ear))["data"] == {"codec": "mulaw", "sample_rate": 8000}
        await mouth.send(last := encode_frame(1, call_id, 1000, b"\x7f" * 80))
        assert await next_binary(ear) == last

        await send(ear, {"type": "unlisten", "call_id": call_id})
        assert await recv(ear) == {"type": "unlistened", "call_id": call_id, "data": {"call_id": call_id}}
        await mouth.send(encode_frame(1, call_id, 1020, b"\x7f" * 80))
        await send(mouth, {**final("after"), "call_id": call_id})
        assert (await recv(ear))["data"]["text"] == "after"  # and no audio before it


HOSTILE: list[tuple[bytes, str, str]] = [
    (b"\x01\x00", "invalid_message", "truncated header"),
    (b"\x09\x00\x00\x01c\x00\x00\x00\x00\x00\x00", "invalid_message", "unknown version 9"),
    (b"\x01\x05\x00\x01c\x00\x00\x00\x00\x00\x00", "invalid_message", "track must be 0 (caller) or 1 (agent)"),
    (b"\x01\x00\x00\x02\xff\xfe\x00\x00\x00\x00\x00\x00", "invalid_message", "not ASCII"),
    (b"\x01\x00\x00\x03a/b\x00\x00\x00\x00\x00\x00", "invalid_message", "call_id must be"),
    (b"\x01\x00\x00\x40short\x00\x00\x00\x00", "invalid_message", "truncated header"),
]


async def test_metrics_count_the_frames_a_node_took_and_queued_for_its_listeners(server: ServerProcess) -> None:
    key, call_id = key_of(server), call()
    received, sent = (metric(server, f"callstream_audio_frames_{what}_total") for what in ("received", "sent"))
    async with await events(server, key) as ear, await events(server, key) as other, await ingest(server, key) as mouth:
        for ws in (ear, other):
            await send(ws, {"type": "listen", "call_id": call_id})
            await quiet(ws)
        await send(mouth, {**FORMAT, "call_id": call_id})
        frames = [encode_frame(n % 2, call_id, n * 20, pcm(n)) for n in range(10)]
        for frame in frames:
            await mouth.send(frame)
        for ws in (ear, other):
            assert (await recv(ws))["type"] == "listening"
            assert [await next_binary(ws) for _ in frames] == frames
    assert metric(server, "callstream_audio_frames_received_total") == received + 10
    assert metric(server, "callstream_audio_frames_sent_total") == sent + 20


async def test_every_malformed_frame_gets_its_error_and_the_socket_goes_on(server: ServerProcess) -> None:
    key, call_id = key_of(server), call()
    async with await events(server, key) as ear, await ingest(server, key) as mouth:
        await send(ear, {"type": "listen", "call_id": call_id})
        for data, code, words in HOSTILE:
            await mouth.send(data)
            error = await recv(mouth)
            assert error["type"] == "error"
            assert error["data"]["code"] == code
            assert words in error["data"]["message"]
        await mouth.send(encode_frame(0, call_id, 0, pcm(0)))  # no format yet
        error = await recv(mouth)
        assert (error["data"]["code"], error["call_id"]) == ("invalid_message", call_id)
        assert "no audio.format" in error["data"]["message"]
        for bad in ({"codec": "opus"}, {"sample_rate": 44100}, {"sample_rate": 16000.0}, {"call_id": "no spaces"}):
            await send(mouth, {**FORMAT, "call_id": call_id, **bad})
            assert (await recv(mouth))["data"]["code"] == "invalid_message"

        await send(mouth, {**FORMAT, "call_id": call_id})
        assert (await recv(ear))["type"] == "listening"
        await mouth.send(encode_frame(0, call_id, 0, b"\x00\x01\x02"))  # a sample and a half
        error = await recv(mouth)
        assert error["data"]["code"] == "invalid_message"
        assert "length mismatch" in error["data"]["message"]
        await mouth.send(encode_frame(0, call_id, 0, b"\x00" * 9600) + b"\x00\x00")  # past 100 ms at 48 kHz
        error = await recv(mouth)
        assert (error["data"]["code"], error["call_id"]) == ("message_too_large", call_id)

        # None of it reached the listener, and the socket still takes audio and events.
        await mouth.send(good := encode_frame(1, call_id, 40, pcm(1)))
        assert await next_binary(ear) == good
        await send(mouth, {**final("still here"), "call_id": call_id, "ref": "r1"})
        assert await recv(mouth) == {"type": "ack", "ref": "r1", "seq": 1}


async def test_listening_takes_the_listen_scope_in_a_key_or_a_token(server: ServerProcess) -> None:
    account = f"acct_{uuid.uuid4().hex[:10]}"
    full, narrow = server.create_key(account), server.create_key(account, "publish,subscribe")
    call_id = call()
    async with await events(server, narrow) as ws:
        await send(ws, {"type": "listen", "call_id": call_id})
        error = await recv(ws)
        assert (error["data"]["code"], error["call_id"]) == ("forbidden", call_id)
        assert "listen scope" in error["data"]["message"]

    mint = f"{server.url}/v1/tokens"
    refused = httpx.post(mint, json={"scope": ["subscribe", "listen"]}, headers={"Authorization": f"Bearer {narrow}"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    plain = httpx.post(mint, json={}, headers={"Authorization": f"Bearer {full}"}).json()["token"]
    listening = httpx.post(
        mint, json={"scope": ["subscribe", "listen"], "calls": [call_id]}, headers={"Authorization": f"Bearer {full}"}
    ).json()["token"]
    async with await events(server, plain) as ws:
        await send(ws, {"type": "listen", "call_id": call_id})
        assert (await recv(ws))["data"]["code"] == "forbidden"
    async with await events(server, listening) as ws, await ingest(server, full) as mouth:
        await send(ws, {"type": "listen", "call_id": "another_call"})  # outside the token's calls
        assert (await recv(ws))["data"]["code"] == "forbidden"
        await send(ws, {"type": "listen", "call_id": call_id})
        await send(mouth, {**FORMAT, "call_id": call_id})
        assert (await recv(ws))["type"] == "listening"


async def test_a_listener_never_hears_another_accounts_call_of_the_same_id(server: ServerProcess) -> None:
    ours, theirs, call_id = key_of(server), key_of(server), call()
    async with await events(server, theirs) as spy, await events(server, ours) as ear, await ingest(server, ours) as mouth:
        for ws in (spy, ear):
            await send(ws, {"type": "listen", "call_id": call_id})
        await send(mouth, {**FORMAT, "call_id": call_id})
        await mouth.send(frame := encode_frame(0, call_id, 0, pcm(0)))
        assert (await recv(ear))["type"] == "listening"
        assert await next_binary(ear) == frame
        await quiet(spy)  # nothing came, not even `listening`: as for a call that never plays


async def test_a_socket_listens_to_four_calls_at_most(server: ServerProcess) -> None:
    key = key_of(server)
    calls = [call() for _ in range(5)]
    async with await events(server, key) as ws:
        for call_id in calls[:4]:
            await send(ws, {"type": "listen", "call_id": call_id})
        await send(ws, {"type": "listen", "call_id": calls[0]})  # again: still four
        await send(ws, {"type": "listen", "call_id": calls[4]})
        error = await recv(ws)
        assert (error["data"]["code"], error["call_id"]) == ("too_many_subscriptions", calls[4])
        await send(ws, {"type": "unlisten", "call_id": calls[1]})
        assert (await recv(ws))["type"] == "unlistened"
        await send(ws, {"type": "listen", "call_id": calls[4]})
        await quiet(ws)


async def test_the_calls_end_ends_its_listens_and_its_audio(server: ServerProcess) -> None:
    key, call_id = key_of(server), call()
    async with await events(server, key) as ear, await ingest(server, key) as mouth:
        await send(ear, {"type": "listen", "call_id": call_id})
        await send(mouth, {**FORMAT, "call_id": call_id})
        assert (await recv(ear))["type"] == "listening"
        assert publish(server, key, call_id, ended()).status_code == 202
        assert await recv(ear) == {
            "type": "unlistened",
            "call_id": call_id,
            "data": {"call_id": call_id, "reason": "ended"},
        }
        await send(mouth, {**FORMAT, "call_id": call_id})
        error = await recv(mouth)
        assert (error["data"]["code"], error["call_id"]) == ("call_not_live", call_id)



async def test_listening_to_a_call_that_has_ended_answers_unlistened_at_once(server: ServerProcess) -> None:
    """As a subscription to it answers `subscribed` with status `ended`: nothing can follow, so
    the listener is told rather than left waiting. Another account's call of that id is one that
    never played: nothing tells it apart from a call not started yet."""
    ours, theirs, call_id = key_of(server), key_of(server), call()
    assert publish(server, ours, call_id, [final("hello"), ended()]).status_code == 202
    async with await events(server, ours) as ear, await events(server, theirs) as other:
        await send(ear, {"type": "listen", "call_id": call_id})
        assert await recv(ear) == {
            "type": "unlistened",
            "call_id": call_id,
            "data": {"call_id": call_id, "reason": "ended"},
        }
        for _ in range(4):  # the ended call holds none of the socket's four listens
            await send(ear, {"type": "listen", "call_id": call()})
        await quiet(ear)
        await send(other, {"type": "listen", "call_id": call_id})
        await quiet(other)


async def test_an_event_reaches_a_listener_ahead_of_the_audio_sent_after_it(server: ServerProcess) -> None:
    """An event's way (sequenced, committed, fanned out) is longer than a frame's (fanned out at
    once), but it must not make the event wait behind audio: on a node with its embedded store, one
    the producer sent before a burst of frames comes to the listener before them."""
    key, call_id = key_of(server), call()
    async with await events(server, key) as ear:
        await send(ear, {"type": "subscribe", "call_id": call_id})
        await send(ear, {"type": "listen", "call_id": call_id})
        assert (await recv(ear))["type"] == "subscribed"
        mouth = RawWebSocket(server.port, f"/v1/ingest?token={key}")
        with contextlib.closing(mouth.sock):
            assert mouth.status == 101
            # The call is live and its format known, so nothing below waits on the store's reads.
            mouth.send(encode(TEXT, orjson.dumps({**FORMAT, "call_id": call_id})))
            mouth.send(encode(TEXT, orjson.dumps({**final("started"), "call_id": call_id})))
            assert [(await recv(ear))["type"] for _ in range(2)] == ["listening", "transcript.final"]
            # The event, then 20 frames, in one write: the server reads them in one go.
            burst = [encode_frame(n % 2, call_id, n * 20, pcm(n)) for n in range(20)]
            event = encode(TEXT, orjson.dumps({**final("before the burst"), "call_id": call_id}))
            mouth.send(event + b"".join(encode(BINARY, frame) for frame in burst))
            first = await asyncio.wait_for(ear.recv(), 5.0)
            assert isinstance(first, str), "an audio frame sent after the event reached the listener first"
            assert orjson.loads(first)["data"]["text"] == "before the burst"
            heard, _ = await read_both(ear, len(burst), texts=0)
            assert heard == burst


async def test_frames_written_right_behind_their_format_wait_for_it_and_all_reach_the_listener(
    server: ServerProcess,
) -> None:
    """A frame the node reads behind other messages waits its turn behind them (it may skip the
    read loop only when nothing came before it): the format sent just before applies first."""
    key, call_id = key_of(server), call()
    async with await events(server, key) as ear:
        await send(ear, {"type": "listen", "call_id": call_id})
        await quiet(ear)
        mouth = RawWebSocket(server.port, f"/v1/ingest?token={key}")
        with contextlib.closing(mouth.sock):
            assert mouth.status == 101
            burst = [encode_frame(n % 2, call_id, n * 20, pcm(n)) for n in range(20)]
            form = encode(TEXT, orjson.dumps({**FORMAT, "call_id": call_id}))
            mouth.send(form + b"".join(encode(BINARY, frame) for frame in burst))
            assert (await recv(ear))["type"] == "listening"
            heard, _ = await read_both(ear, len(burst), texts=0)
            assert heard == burst


# ---- a slow listener ------------------------------------------------------------------------------


class StalledListener:
    """A real WebSocket client that reads only when told to: websockets' sans-I/O protocol over a
    raw socket, so no library reads on its behalf."""

    def __init__(self, server: ServerProcess, key: str) -> None:
        # A small receive buffer: the server's side fills after a few frames, not megabytes.
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        self.sock.connect(("127.0.0.1", server.port))
        self.protocol = ClientProtocol(parse_uri(f"{server.ws_url}/v1/events?token={key}"), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        while not any(isinstance(e, Response) for e in self.protocol.events_received()):
            self.protocol.receive_data(self.sock.recv(4096))
        self.texts: list[dict[str, Any]] = []
        self.frames: list[bytes] = []
        self.close_code: int | None = None

    def send(self, message: dict[str, object]) -> None:
        self.protocol.send_text(orjson.dumps(message))
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def read_until(self, done: Any, timeout: float = 30.0) -> None:
        """Read until `done(self)` holds or the server closes."""
        self.sock.settimeout(timeout)
        while not done(self) and self.close_code is None:
            data = self.sock.recv(1 << 16)
            if not data:
                self.protocol.receive_eof()
                self.close_code = self.close_code or -1
            else:
                self.protocol.receive_data(data)
                self.sock.sendall(b"".join(self.protocol.data_to_send()))  # pongs: it is alive
            for frame in self.protocol.events_received():
                if isinstance(frame, Frame) and frame.opcode == Opcode.TEXT:
                    self.texts.append(orjson.loads(frame.data))
                elif isinstance(frame, Frame) and frame.opcode == Opcode.BINARY:
                    self.frames.append(bytes(frame.data))
                elif isinstance(frame, Frame) and frame.opcode == Opcode.CLOSE:
                    close = self.protocol.close_rcvd
                    self.close_code = -1 if close is None else close.code
        if self.close_code is not None:
            self.sock.close()


def metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_slow_listener_loses_its_oldest_audio_while_its_events_arrive_then_is_cut_off(
    fresh_server: ServerProcess,
) -> None:
    fresh_server.env["CALLSTREAM_LISTEN_BUFFER_BYTES"] = str(512 << 10)  # room to stop before the cut
    fresh_server.start()
    key, call_id = fresh_server.create_key("acme"), call()
    slow = StalledListener(fresh_server, key)
    with contextlib.closing(slow.sock):
        slow.send({"type": "subscribe", "call_id": call_id})
        slow.send({"type": "listen", "call_id": call_id})
        async with await ingest(fresh_server, key, ping_interval=None) as mouth:
            await send(mouth, {**FORMAT, "sample_rate": 48000, "call_id": call_id})
            # Frames of 100 ms until the server drops some for the stalled listener: its socket's
            # buffers are full, then its own audio buffer is.
            sent = 0
            while metric(fresh_server, "callstream_audio_frames_dropped_total") == 0:
                for _ in range(10):
                    await mouth.send(encode_frame(sent % 2, call_id, sent * 100, pcm(sent, 9600)))
                    sent += 1
                assert sent < 20_000, "the server never dropped audio for a listener that does not read"
            assert publish(fresh_server, key, call_id, final("an event still arrives")).status_code == 202
            await mouth.send(marker := encode_frame(1, call_id, 99_999_999, pcm(7, 9600)))

            def caught_up(listener: StalledListener) -> bool:
                return marker in listener.frames and any(m["type"] == "transcript.final" for m in listener.texts)

            await asyncio.to_thread(slow.read_until, caught_up)
            assert slow.close_code is None
            assert [m["type"] for m in slow.texts] == ["subscribed", "listening", "transcript.final"]
            heard = [parse_frame(f).ms for f in slow.frames]
            assert heard == sorted(heard)  # in order, the oldest gone, the newest kept
            assert len(heard) < sent + 1
            assert heard[-1] == 99_999_999

            # A listener that keeps falling behind is cut off as a slow consumer.
            while metric(fresh_server, "callstream_slow_consumers_total") == 0:
                for _ in range(20):
                    await mouth.send(encode_frame(sent % 2, call_id, sent * 100, pcm(sent, 9600)))
                    sent += 1
            await asyncio.to_thread(slow.read_until, lambda listener: False)
        assert slow.close_code == 4008
        assert slow.texts[-1]["data"]["code"] == "slow_consumer"


async def test_a_listener_on_one_node_hears_a_producer_on_another(cluster: Cluster, account: str) -> None:
    near, far = cluster.start(2)
    key, call_id = cluster.key(account), call()
    async with await events(far, key) as ear, await ingest(near, key) as mouth:
        await send(ear, {"type": "listen", "call_id": call_id})
        await quiet(ear)  # the listen is in: the far node subscribes the call's audio
        await send(mouth, {**FORMAT, "call_id": call_id})
        # Until the far node is heard from (its subscription, then the near node's mute), frames
        # may be lost: live audio is not replayed. Send until the listener hears of the call.
        n = 0
        while True:
            await mouth.send(encode_frame(0, call_id, n * 20, pcm(n)))
            n += 1
            try:
                first = await asyncio.wait_for(ear.recv(), 0.05)
                break
            except TimeoutError:
                assert n < 500, "the far node never heard the call's audio"
        assert orjson.loads(first) == {
            "type": "listening",
            "call_id": call_id,
            "data": {"codec": "pcm_s16le", "sample_rate": 16000},
        }
        sent = [encode_frame(n % 2, call_id, 10_000_000 + n * 20, pcm(n)) for n in range(40)]
        for frame in sent:
            await mouth.send(frame)
        heard: list[bytes] = []
        while len(heard) < len(sent):
            data = await next_binary(ear)
            if parse_frame(data).ms >= 10_000_000:  # those sent before `listening` came are skipped
                heard.append(data)
        assert heard == sent

        # The call ends on the near node: the far node's listens end with it.
        await send(mouth, {**ended(), "call_id": call_id})
        assert await next_text(ear) == {
            "type": "unlistened",
            "call_id": call_id,
            "data": {"call_id": call_id, "reason": "ended"},
        }


async def test_listening_on_one_node_to_a_call_ended_on_another_answers_unlistened(cluster: Cluster, account: str) -> None:
    """The far node knows the call's format (its producer declared it there) but not its end,
    which another node sequenced while nobody here listened: the listen still answers only
    `unlistened`, never a `listening` in the format it remembers."""
    near, far = cluster.start(2)
    key, call_id = cluster.key(account), call()
    async with await ingest(far, key) as mouth:
        await send(mouth, {**FORMAT, "call_id": call_id})
        await send(mouth, {**final("hello"), "call_id": call_id, "ref": 1})
        assert (await recv(mouth))["type"] == "ack"  # the format before it was taken
    assert publish(near, key, call_id, ended()).status_code == 202
    async with await events(far, key) as ear:
        await send(ear, {"type": "listen", "call_id": call_id})
        assert await recv(ear) == {
            "type": "unlistened",
            "call_id": call_id,
            "data": {"call_id": call_id, "reason": "ended"},
        }


async def test_a_listening_for_one_call_drops_no_queued_audio_of_another(fresh_server: ServerProcess) -> None:
    """Audio still queued when a `listening` goes out is dropped because it would be played in
    the format that `listening` replaces: that is only the audio of the call it names."""
    fresh_server.env["CALLSTREAM_LISTEN_BUFFER_BYTES"] = str(64 << 20)  # nothing overflows here
    fresh_server.start()
    key, playing, joining = fresh_server.create_key("acme"), call(), call()
    slow = StalledListener(fresh_server, key)
    with contextlib.closing(slow.sock):
        slow.send({"type": "listen", "call_id": playing})
        async with await ingest(fresh_server, key, ping_interval=None) as mouth:
            for call_id in (playing, joining):
                await send(mouth, {**FORMAT, "sample_rate": 48000, "call_id": call_id})
            sent = [encode_frame(n % 2, playing, n * 100, pcm(n, 9600)) for n in range(1000)]
            for frame in sent:  # far more than the socket's buffers: most waits in the listener's
                await mouth.send(frame)
            await send(mouth, {**final("sent"), "call_id": playing, "ref": 1})
            assert (await recv(mouth))["type"] == "ack"  # every frame before it was taken
            slow.send({"type": "listen", "call_id": joining})  # its format is known: `listening` now

            def heard_all(listener: StalledListener) -> bool:
                return len(listener.frames) == len(sent) and len(listener.texts) == 2

            with contextlib.suppress(TimeoutError):  # a lost frame never comes
                await asyncio.to_thread(slow.read_until, heard_all, 5.0)
    assert [m["type"] for m in slow.texts] == ["listening", "listening"]
    assert (len(slow.frames), metric(fresh_server, "callstream_audio_frames_dropped_total")) == (len(sent), 0)
    assert slow.frames == sent


async def test_a_new_format_drops_the_calls_audio_queued_in_the_old_one(fresh_server: ServerProcess) -> None:
    """The other side of the test above: the audio of the call `listening` names, queued in the
    format it replaces, is dropped (and counted) rather than played in the wrong one."""
    fresh_server.env["CALLSTREAM_LISTEN_BUFFER_BYTES"] = str(64 << 20)  # nothing overflows here
    fresh_server.start()
    key, playing = fresh_server.create_key("acme"), call()
    slow = StalledListener(fresh_server, key)
    with contextlib.closing(slow.sock):
        slow.send({"type": "listen", "call_id": playing})
        async with await ingest(fresh_server, key, ping_interval=None) as mouth:
            await send(mouth, {**FORMAT, "sample_rate": 48000, "call_id": playing})
            sent = [encode_frame(n % 2, playing, n * 100, pcm(n, 9600)) for n in range(1000)]
            for frame in sent:  # far more than the socket's buffers: most waits in the listener's
                await mouth.send(frame)
            await send(mouth, {**FORMAT, "sample_rate": 16000, "call_id": playing})
            await send(mouth, {**final("sent"), "call_id": playing, "ref": 1})
            assert (await recv(mouth))["type"] == "ack"  # every frame and the format before it were taken

            def told_twice(listener: StalledListener) -> bool:
                return len(listener.texts) == 2

            await asyncio.to_thread(slow.read_until, told_twice, 5.0)
            with contextlib.suppress(TimeoutError):  # the dropped frames never come
                await asyncio.to_thread(slow.read_until, lambda listener: len(listener.frames) == len(sent), 1.0)
    assert [(m["type"], m["data"]["sample_rate"]) for m in slow.texts] == [("listening", 48000), ("listening", 16000)]
    dropped = metric(fresh_server, "callstream_audio_frames_dropped_total")
    assert 0 < len(slow.frames) < len(sent)
    assert dropped == len(sent) - len(slow.frames)
    assert slow.frames == sent[: len(slow.frames)]
