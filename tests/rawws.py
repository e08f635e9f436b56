"""A hand-rolled WebSocket client over a blocking socket: any frame, valid or not, on the wire.

For fuzzing the server's frame handling: the websockets library refuses to send malformed frames,
so frames are built by hand here (RFC 6455 §5.2) and the server's answers parsed the same way.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from dataclasses import dataclass

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


@dataclass
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE:
            return None
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005


def encode(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame. `length` lies about the payload length when given (for huge-frame headers)."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0xF])
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_request(port: int, path: str, *extra: str, key: str | None = None) -> tuple[bytes, str]:
    """An RFC 6455 opening handshake request (and its Sec-WebSocket-Key); `extra`: header lines."""
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


class RawWebSocket:
    def __init__(self, port: int, path: str, timeout: float = 5.0, origin: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        request, _ = upgrade_request(port, path, *([f"Origin: {origin}"] if origin else []))
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])

    def send(self, data: bytes) -> bool:
        """False once the server has closed the TCP connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _need(self, n: int, deadline: float) -> bool:
        while len(self.buffer) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                return False
            except OSError:
                return False
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read(self, timeout: float = 5.0) -> Frame | None:
        """The next frame from the server; None on timeout or EOF."""
        deadline = time.monotonic() + timeout
        if not self._need(2, deadline):
            return None
        b0, b1 = self.buffer[0], self.buffer[1]
        size, offset = b1 & 0x7F, 2
        if size == 126:
            if not self._need(4, deadline):
                return None
            size, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif size == 127:
            if not self._need(10, deadline):
                return None
            size, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if not self._need(offset + size, deadline):
            return None
        payload = self.buffer[offset : offset + size]
        self.buffer = self.buffer[offset + size :]
        return Frame(b0 & 0xF, payload, bool(b0 & 0x80))

    def frames_until_close(self, timeout: float = 5.0) -> list[Frame]:
        """Every frame up to the close frame (included), or up to a quiet `timeout`."""
        out: list[Frame] = []
        while (frame := self.read(timeout)) is not None:
            out.append(frame)
            if frame.opcode == CLOSE:
                break
        return out

    def close(self) -> None:
        self.sock.close()
