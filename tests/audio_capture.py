"""A producer's live audio as it reaches the ingest socket, for the producers' audio tests.

`AudioIngest` is a real WebSocket server on loopback standing in for the server's ingest socket
(docs/protocol.md, Producing and Live audio): it acks every event and keeps every message as it
came, text and binary, per connection, so a test reads exactly the bytes a producer put on the
wire. The end-to-end tests read the same through a listener of the real server (`listen_frames`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve

from callstream.audio import AudioFrame, parse_frame
from tests.helpers import ServerProcess, open_events, send

TRACKS = {"caller": 0, "agent": 1}


@dataclass
class AudioIngest:
    """Acks every event; keeps each connection's messages: dicts (text) and frames (binary)."""

    url: str = ""
    connections: list[list[dict[str, Any] | AudioFrame]] = field(default_factory=list)
    refuse: bool = False  # answer handshakes with HTTP 503 (the server is down)
    slow: float = 0.0  # seconds each handshake waits for its answer (a server overloaded or far away)
    more: asyncio.Event = field(default_factory=asyncio.Event)  # set on every message
    live: list[ServerConnection] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, Any] | AudioFrame]:
        return [m for conn in self.connections for m in conn]

    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if isinstance(m, dict) and "ref" in m]

    def formats(self, connection: int | None = None) -> list[dict[str, Any]]:
        found = self.messages if connection is None else self.connections[connection]
        return [m for m in found if isinstance(m, dict) and m.get("type") == "audio.format"]

    def frames(self, call_id: str | None = None, track: str | None = None) -> list[AudioFrame]:
        return [
            m for m in self.messages
            if isinstance(m, AudioFrame) and (call_id is None or m.call_id == call_id)
            and (track is None or m.track == TRACKS[track])
        ]  # fmt: skip

    def pcm(self, call_id: str, track: str) -> bytes:
        return b"".join(f.payload for f in self.frames(call_id, track))

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `done()` holds for what arrived."""
        async with asyncio.timeout(timeout):
            while not done():
                self.more.clear()
                await self.more.wait()

    async def process_request(self, connection: ServerConnection, request: Any) -> Any:
        await asyncio.sleep(self.slow)
        if self.refuse:
            return connection.respond(503, "down for the test")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        received: list[dict[str, Any] | AudioFrame] = []
        self.connections.append(received)
        self.live.append(ws)
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    received.append(parse_frame(raw))
                else:
                    msg = orjson.loads(raw)
                    received.append(msg)
                    if "ref" in msg:
                        await ws.send(orjson.dumps({"type": "ack", "ref": msg["ref"], "seq": len(received)}).decode())
                self.more.set()
        finally:
            self.live.remove(ws)

    async def drop_all(self) -> None:
        """Abort every open connection (the network failed)."""
        for ws in list(self.live):
            ws.transport.abort()


@contextlib.asynccontextmanager
async def audio_ingest() -> AsyncIterator[AudioIngest]:
    ingest = AudioIngest()
    async with serve(ingest.handler, "127.0.0.1", 0, process_request=ingest.process_request) as srv:
        ingest.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        yield ingest


# -- the real server: a listener ---------------------------------------------------------------------


@dataclass
class Listener:
    """A `listen`ing socket of the real server and what it heard."""

    ws: ClientConnection
    formats: list[dict[str, Any]] = field(default_factory=list)  # `listening` data
    frames: list[AudioFrame] = field(default_factory=list)

    def pcm(self, track: str) -> bytes:
        return b"".join(f.payload for f in self.frames if f.track == TRACKS[track])

    async def until(self, done: Callable[[Listener], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not done(self):
                raw = await self.ws.recv()
                if isinstance(raw, bytes):
                    self.frames.append(parse_frame(raw))
                else:
                    msg = orjson.loads(raw)
                    assert msg.get("type") != "error", msg
                    if msg.get("type") == "listening":
                        self.formats.append(msg["data"])


@contextlib.asynccontextmanager
async def listening(server: ServerProcess, key: str, call_id: str) -> AsyncIterator[Listener]:
    """A listener of `call_id` on the real server, listening before the call's audio starts."""
    ws = await open_events(server, key)
    await send(ws, {"type": "listen", "call_id": call_id})
    try:
        yield Listener(ws)
    finally:
        await ws.close()


# -- what the audio says --------------------------------------------------------------------------------


def sine(hz: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> bytes:
    """16-bit little-endian PCM of a sine wave, the same on every channel."""
    count = int(seconds * rate)
    out = bytearray()
    for i in range(count):
        sample = int(amplitude * 32767 * math.sin(2 * math.pi * hz * i / rate)).to_bytes(2, "little", signed=True)
        out += sample * channels
    return bytes(out)


def dominant_hz(pcm: bytes, rate: int) -> float:
    """The frequency that carries most of the energy of 16-bit mono ``pcm`` played at ``rate``."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])
