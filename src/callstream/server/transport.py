"""uvicorn's sans-I/O WebSocket protocol, with one change: urgent frames skip the write wait.

uvicorn makes every `send` wait while the socket's write buffer is over its high-water mark,
which is right for data and wrong for the last words to a slow consumer: the `slow_consumer`
error and the 4008 close would wait forever behind the very backlog they are about. An urgent
frame is appended to the transport buffer at once (one small frame; the client reads it after
the backlog, in order), and a peer that never drains is aborted after a grace period instead
of holding the connection open.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

URGENT = "callstream.urgent"
ABORT_AFTER_CLOSE_S = 30.0


class CallstreamWebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        if not message.get(URGENT) or self.writable.is_set():
            await super().send(message)
        else:
            self.writable.set()
            try:
                await super().send(message)
            finally:
                self.writable.clear()
        if message.get(URGENT) and message["type"] == "websocket.close":
            self.loop.call_later(ABORT_AFTER_CLOSE_S, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.transport.abort()
