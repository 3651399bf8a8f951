"""Where a connection's messages are written (``services.hub.ports.Outlet``).

Under Hypercorn 0.18 with our patch (``ws_server``), over HTTP/1.1: straight into the socket's
transport, as the bytes made once per channel (plain, or deflated without context when the
client negotiated permessage-deflate); the transport's write buffer is the backpressure (above
its high-water mark a message waits until the peer has taken most of it). Anywhere else (Quart's
test client, HTTP/2, another server): through the ASGI ``websocket.send``, one awaited send per
message, as any Quart app does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.extensions import PerMessageDeflate

from blueprints.ws_server import STREAM_KEY, writer_of
from services.hub.ports import Outlet
from services.hub.wire import Message


class TransportOutlet:
    """Writes pre-framed messages into one WebSocket's socket buffer (no task, no copy)."""

    __slots__ = ("_high", "_stream", "_transport", "_writer", "wbits")

    def __init__(self, stream: WSStream, writer: asyncio.StreamWriter, wbits: int) -> None:
        self._stream, self._writer, self._transport = stream, writer, writer.transport
        self._high = self._transport.get_write_buffer_limits()[1]
        #: permessage-deflate window bits agreed with the client (no context takeover), 0: none.
        self.wbits = wbits

    def _open(self) -> bool:
        stream = self._stream
        return (not stream.closed and stream.state is ASGIWebsocketState.CONNECTED
                and not self._transport.is_closing())

    def ready(self) -> bool:
        # A closed socket is "ready": its messages are dropped at once, not queued.
        return self._transport.get_write_buffer_size() <= self._high or not self._open()

    def write(self, message: Message) -> None:
        if self._open():
            self._transport.write(message.encoded(self.wbits))

    async def send(self, message: Message) -> None:
        try:
            await self._writer.drain()  # until the buffer is below its low-water mark
        except ConnectionError:
            return  # the peer is gone: the reader sees the disconnect
        self.write(message)


class SendOutlet:
    """Writes through the ASGI send of Quart's ``websocket`` (text frames, awaited one by one)."""

    __slots__ = ("_send",)

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self._send = send

    def ready(self) -> bool:
        return False

    def write(self, message: Message) -> None:
        raise RuntimeError("an ASGI send is awaited: use send()")

    async def send(self, message: Message) -> None:
        await self._send(message.text)


def deflate_bits(stream: WSStream) -> int | None:
    """The server window bits of the stream's permessage-deflate (0: not negotiated); None when
    it keeps a context between messages (then only wsproto can compress its messages)."""
    for ext in stream.connection._proto.extensions:
        if isinstance(ext, PerMessageDeflate) and ext.enabled():
            return ext.server_max_window_bits if ext.server_no_context_takeover else None
    return 0


def outlet_for(websocket: Any) -> Outlet:
    """The fastest outlet for Quart's current ``websocket`` (accepted)."""
    ref = websocket.scope.get("extensions", {}).get(STREAM_KEY)
    stream = ref() if ref is not None else None
    if stream is not None and (writer := writer_of(stream)) is not None:
        wbits = deflate_bits(stream)
        if wbits is not None:
            return TransportOutlet(stream, writer, wbits)
    return SendOutlet(websocket.send)
