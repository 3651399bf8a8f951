"""Quart's ASGI WebSocket handling without a receiver task and queue per connection.

Quart (0.22, ``quart.asgi.ASGIWebsocketConnection``) runs two tasks per WebSocket: one moves
every ASGI event into an unbounded ``asyncio.Queue`` that the handler reads, the other runs the
handler, and it waits on both; a disconnect cancels the handler. For thousands of idle
connections that is 2 tasks, a queue and a wait each (about 7 KiB). ``LeanWebsocketConnection``
(set as ``app.asgi_websocket_class``, Quart's documented hook) runs the handler in the
connection's own ASGI task and lets ``websocket.receive()`` read the ASGI events itself (Hypercorn
already queues them, bounded); the disconnect still ends the handler with a cancellation, raised
at its ``receive()`` (the only place our handler waits on the client; others wait on the
services, and a disconnect is seen at the next receive).
"""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Quart
from quart.asgi import ASGIWebsocketConnection
from quart.signals import websocket_received


class _Events:
    """Stands for Quart's queue: ``get`` reads the next message from the ASGI receive."""

    __slots__ = ("get",)

    def __init__(self, get: Any) -> None:
        self.get = get


class LeanWebsocketConnection(ASGIWebsocketConnection):
    """See the module docstring."""

    def __init__(self, app: Quart, scope: Any) -> None:  # no Queue: Quart's __init__ makes one
        self.app = app
        self.scope = scope
        self.queue = _Events(self._next_message)  # type: ignore[assignment]
        self._accepted = False
        self._closed = False
        self._receive: Any = None
        self._gone = False
        self._cancelled = False

    async def __call__(self, receive: Any, send: Any) -> None:
        self._receive = receive
        websocket = self._create_websocket_from_scope(send)
        try:
            await self.handle_websocket(websocket, send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._cancelled or task is None or task.uncancel() > 0:
                raise  # a cancellation from outside (the server's shutdown), not the disconnect

    async def _next_message(self) -> str | bytes:
        if not self._gone:
            event = await self._receive()
            if event["type"] == "websocket.receive":
                message: str | bytes = event.get("bytes") or event["text"]
                await websocket_received.send_async(message)
                return message
            self._gone = event["type"] == "websocket.disconnect"
            if not self._gone:
                return await self._next_message()
        # As under Quart, the client's disconnect ends the handler with a cancellation.
        task = asyncio.current_task()
        if task is not None and not self._cancelled:
            self._cancelled = True
            task.cancel()
            await asyncio.sleep(0)  # raises it
        raise asyncio.CancelledError
