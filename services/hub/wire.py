"""WebSocket messages as the bytes a server writes, made once and shared (RFC 6455, RFC 7692).

A frame of a channel is framed once per instance, and deflated once per window size for the
clients that negotiated permessage-deflate: every client of the channel is handed the same bytes.
That is only valid because the server never keeps a compression context between messages
(``server_no_context_takeover``, which the server always answers, see ``blueprints/ws_server.py``):
each message is deflated on its own, so any client of that window size can inflate it.
"""

from __future__ import annotations

import json
import struct
import zlib
from functools import cached_property
from typing import Any, Protocol

_COMPACT = (",", ":")
#: FIN + text opcode; RSV1 marks a deflated message.
_TEXT, _RSV1 = 0x81, 0x40
#: Replies shorter than this go uncompressed (RFC 7692 lets a sender choose per message): for a
#: ``pong`` or ``subscribed`` deflate saves nothing and costs a compressor's 256 KiB for a moment.
DEFLATE_MIN_BYTES = 512


class Message(Protocol):
    """What a connection writes: its JSON text (for a plain ASGI send) or its framed bytes."""

    @property
    def text(self) -> str: ...

    def encoded(self, wbits: int) -> bytes:
        """The whole WebSocket message: deflated with a ``2**wbits`` window, plain when 0."""
        ...


def frame(text: str, wbits: int) -> bytes:
    """One unfragmented server text message of ``text`` (deflated, no context, when ``wbits``)."""
    payload = text.encode()
    first = _TEXT
    if wbits:
        deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
        payload = (deflate.compress(payload) + deflate.flush(zlib.Z_SYNC_FLUSH))[:-4]
        first |= _RSV1
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 126, size)
    else:
        head = struct.pack("!BBQ", first, 127, size)
    return head + payload


class Shared:
    """Mixin of a frame shared by every client of a channel: its text and its framed bytes, each
    made on first use and kept (one per window size)."""

    def client(self) -> dict[str, Any]:
        raise NotImplementedError

    @cached_property
    def text(self) -> str:
        """The client frame as JSON text (encoded once, shared by every client)."""
        return json.dumps(self.client(), separators=_COMPACT)

    @cached_property
    def _framed(self) -> dict[int, bytes]:
        return {}

    def encoded(self, wbits: int) -> bytes:
        framed = self._framed.get(wbits)
        if framed is None:
            framed = self._framed[wbits] = frame(self.text, wbits)
        return framed


class Reply:
    """A frame for one client (``subscribed``, ``snapshot``, ``pong``, ``error``...): made for it
    alone, so nothing is kept."""

    __slots__ = ("text",)

    def __init__(self, body: dict[str, Any]) -> None:
        self.text = json.dumps(body, separators=_COMPACT)

    def encoded(self, wbits: int) -> bytes:
        return frame(self.text, wbits if len(self.text) >= DEFLATE_MIN_BYTES else 0)
