"""Live audio on one node: who listens to which call, and how a frame reaches them
(docs/protocol.md, Live audio).

A frame accepted on this node's ingest sockets goes, as one pre-encoded WebSocket frame, to
every listener of its call here, and over the broker to the other nodes that have listeners of
it (`Broker.publish_audio`); a frame another node relays comes in through `relayed`. Nothing of
it is stored, nor sequenced: audio is live only, and the events' path never waits for it.

A listener is told the call's format (`listening`) before its first frame, and again whenever
the format changes: at once when the node knows the format, else with the first audio that
comes. Each relayed message carries the format, so a node that starts listening learns it from
the first frame it hears.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from callstream import metrics
from callstream.audio import CODECS, AudioFormat, AudioFrame, binary_frame

_MAX_FORMATS: Final = 100_000  # calls whose format a node remembers (least recently used go first)

# What goes between nodes: u8 kind | u8 codec | u32 sample rate | u8 length of node id | node id
# | the frame as the producer sent it (kind FRAME) or nothing (FORMAT, ENDED).
FRAME, FORMAT, ENDED = 0, 1, 2
_RELAY: Final = struct.Struct(">BBIB")
_CODEC_IDS: Final = {name: i for i, name in enumerate(CODECS)}
_CODEC_NAMES: Final = list(CODECS)


class Listener(Protocol):
    """What the desk needs of a listening connection; none of it may block."""

    def audio_listening(self, call_id: str, fmt: AudioFormat) -> None:
        """Send `listening` with the call's format."""

    def audio_out(self, frame: bytes) -> None:
        """Queue one binary WebSocket frame (the same bytes for every listener)."""

    def audio_ended(self, call_id: str) -> None:
        """The call ended: its listen is over (send `unlistened`)."""


Key = tuple[str, str]  # (account, call_id)
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class AudioRelay(Protocol):
    """The broker's side of audio (`Broker` implements it; the embedded one does nothing)."""

    @property
    def node_id(self) -> str: ...

    @property
    def relays_audio(self) -> bool: ...

    def publish_audio(self, account: str, call_id: str, message: bytes, *, always: bool = False) -> None: ...

    async def listen_audio(self, account: str, call_id: str) -> None: ...

    async def unlisten_audio(self, account: str, call_id: str) -> None: ...


def relay_message(kind: int, fmt: AudioFormat, node: str, body: bytes = b"") -> bytes:
    name = node.encode()
    return _RELAY.pack(kind, _CODEC_IDS[fmt.codec], fmt.sample_rate, len(name)) + name + body


def read_relay(message: bytes) -> tuple[int, AudioFormat, str, bytes] | None:
    """(kind, format, node, body) of a relayed message; None for one that is not well formed."""
    if len(message) < _RELAY.size:
        return None
    kind, codec, rate, node_len = _RELAY.unpack_from(message)
    start = _RELAY.size + node_len
    if codec >= len(_CODEC_NAMES) or len(message) < start or kind not in (FRAME, FORMAT, ENDED):
        return None
    fmt = AudioFormat(_CODEC_NAMES[codec], rate)
    return kind, fmt, message[_RELAY.size : start].decode(errors="replace"), message[start:]


class AudioDesk:
    """The node's listeners per call, the formats it knows, and the relay to other nodes.

    `spawn` runs the broker's (un)subscriptions in the background: a listen is answered at
    once, and a node subscribes a call's audio channel only while it has listeners of it.
    """

    def __init__(self, relay: AudioRelay, spawn: Spawn) -> None:
        self._relay = relay
        self._spawn = spawn
        # Per call: each listener and the format it was last told (None: not told yet).
        self._listeners: dict[Key, dict[Listener, AudioFormat | None]] = {}
        self._formats: OrderedDict[Key, AudioFormat] = OrderedDict()

    def listen(self, listener: Listener, account: str, call_id: str) -> None:
        """Add the listen (again: its `listening` comes again). The listener hears the call's
        format with its first audio, or from `announce`."""
        key = (account, call_id)
        listeners = self._listeners.get(key)
        if listeners is None:
            listeners = self._listeners[key] = {}
            if self._relay.relays_audio:
                self._spawn(self._relay.listen_audio(account, call_id))
        listeners[listener] = None

    def announce(self, listener: Listener, account: str, call_id: str) -> None:
        """Send `listening` now if this node knows the call's format and has not told it to the
        listener since its `listen`. Apart from `listen` so that the socket first makes sure the
        call has not ended: a node may remember the format of a call that ended elsewhere."""
        key = (account, call_id)
        listeners = self._listeners.get(key)
        fmt = self._formats.get(key)
        if fmt is None or listeners is None or listener not in listeners or listeners[listener] is not None:
            return
        listeners[listener] = fmt
        listener.audio_listening(call_id, fmt)

    def unlisten(self, listener: Listener, account: str, call_id: str) -> None:
        key = (account, call_id)
        listeners = self._listeners.get(key)
        if listeners is None or listener not in listeners:
            return
        del listeners[listener]
        if not listeners:
            del self._listeners[key]
            if self._relay.relays_audio:
                self._spawn(self._relay.unlisten_audio(account, call_id))

    def listener_count(self) -> int:
        return sum(map(len, self._listeners.values()))

    # ---- audio from this node's producers ----------------------------------------------------

    def format(self, account: str, call_id: str, fmt: AudioFormat) -> None:
        """A producer here declared the call's format: listeners here hear of it now, other
        nodes' with it (and with every frame)."""
        self._remember(account, call_id, fmt)
        self._tell(account, call_id, fmt)
        if self._relay.relays_audio:
            self._relay.publish_audio(account, call_id, relay_message(FORMAT, fmt, self._relay.node_id))

    def frame(self, account: str, call_id: str, fmt: AudioFormat, frame: AudioFrame) -> None:
        self._fan_out(account, call_id, fmt, frame.raw)
        if self._relay.relays_audio:
            self._relay.publish_audio(account, call_id, relay_message(FRAME, fmt, self._relay.node_id, frame.raw))

    def ended(self, account: str, call_id: str) -> None:
        """The call ended (its `call.ended` was sequenced here): every listen of it is over."""
        self._end(account, call_id)
        if self._relay.relays_audio:
            fmt = AudioFormat("pcm_s16le", 8000)  # an ending carries no format: any will do
            message = relay_message(ENDED, fmt, self._relay.node_id)
            self._relay.publish_audio(account, call_id, message, always=True)

    # ---- audio from other nodes ------------------------------------------------------------------

    def relayed(self, account: str, call_id: str, message: bytes) -> None:
        """A message another node published on the call's audio channel (this node's own are
        left out: its listeners had them first-hand)."""
        read = read_relay(message)
        if read is None:
            return
        kind, fmt, node, body = read
        if node == self._relay.node_id:
            return
        if kind == ENDED:
            self._end(account, call_id)
            return
        self._remember(account, call_id, fmt)
        if kind == FORMAT:
            self._tell(account, call_id, fmt)
        elif body:
            self._fan_out(account, call_id, fmt, body)

    # ---- inside ---------------------------------------------------------------------------------

    def _remember(self, account: str, call_id: str, fmt: AudioFormat) -> None:
        key = (account, call_id)
        if self._formats.get(key) != fmt:
            self._formats[key] = fmt
        self._formats.move_to_end(key)
        if len(self._formats) > _MAX_FORMATS:
            self._formats.popitem(last=False)

    def _tell(self, account: str, call_id: str, fmt: AudioFormat) -> None:
        listeners = self._listeners.get((account, call_id))
        if not listeners:
            return
        for listener, told in listeners.items():
            if told != fmt:
                listeners[listener] = fmt
                listener.audio_listening(call_id, fmt)

    def _fan_out(self, account: str, call_id: str, fmt: AudioFormat, raw: bytes) -> None:
        listeners = self._listeners.get((account, call_id))
        if not listeners:
            return
        frame = binary_frame(raw)
        for listener, told in listeners.items():
            if told is not fmt and told != fmt:
                listeners[listener] = fmt
                listener.audio_listening(call_id, fmt)
            listener.audio_out(frame)
        metrics.AUDIO_FRAMES_SENT.inc(len(listeners))

    def _end(self, account: str, call_id: str) -> None:
        key = (account, call_id)
        self._formats.pop(key, None)
        listeners = self._listeners.pop(key, None)
        if not listeners:
            return
        if self._relay.relays_audio:
            self._spawn(self._relay.unlisten_audio(account, call_id))
        for listener in listeners:
            listener.audio_ended(call_id)
