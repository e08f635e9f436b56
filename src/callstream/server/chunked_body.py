"""A streamed HTTP response's body written straight to uvicorn's transport, as uvicorn writes it.

uvicorn's ASGI `send` (httptools: `RequestResponseCycle.send`) is a coroutine per call: it waits
while the transport's buffer is over its high-water mark, then writes a chunk of the chunked
transfer encoding (`<size in hex>\\r\\n<body>\\r\\n`) with one `transport.write`. An event stream of
one call gets the same bytes of every event as every other stream of that call, and fan-out
writes them into thousands of responses: there the coroutine, its message dict and the encoding
per response cost more than the write. `ChunkedBody` writes a chunk built once for every stream
(`chunk`) with the same `transport.write`, and only while uvicorn's own send would not wait
(`ChunkedBody.open`), so the bytes on the wire are the ones `send` writes, in the same order.

Only uvicorn's httptools server, on a response it sends chunked, gets one (`chunked_body`);
elsewhere (h11, another server) a stream writes through `send`. None of the cycle's state is
uvicorn's public API: tests/test_transport_contract.py checks what is read here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import Send

try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
except ImportError:  # httptools not installed: every stream writes through `send`
    RequestResponseCycle = None  # type: ignore[assignment,misc]


def chunk(body: bytes) -> bytes:
    """`body` as one chunk of a chunked response (RFC 9112 §7.1), as uvicorn frames it."""
    return b"%x\r\n" % len(body) + body + b"\r\n"


class ChunkedBody:
    """The write behind a started, chunked response's `send`."""

    __slots__ = ("_cycle", "_flow", "write")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._flow = cycle.flow
        self.write: Callable[[bytes], None] = cycle.transport.write  # takes complete chunks only

    @property
    def open(self) -> bool:
        """A chunk written now goes out as `send` would write it: `send` would not wait (the
        client keeps up), the client is there and the response is not complete."""
        cycle = self._cycle
        return not self._flow.write_paused and not cycle.disconnected and not cycle.response_complete


def chunked_body(send: Send) -> ChunkedBody | None:
    """The body writer behind `send` once its response has started chunked, else None."""
    cycle = getattr(send, "__self__", None)
    if RequestResponseCycle is None or type(cycle) is not RequestResponseCycle:
        return None
    if not cycle.response_started or cycle.chunked_encoding is not True or cycle.scope["method"] == "HEAD":
        return None
    return ChunkedBody(cycle)
