"""``WebsocketReceive``: a pure ASGI middleware (Starlette's ``middleware/`` shape) that gives every
``websocket.receive`` event both of its keys, ``bytes`` and ``text``.

The ASGI spec lets a server send one or both ("Exactly one of bytes or text must be non-None. One
or both keys may be present"): Hypercorn sends both, Uvicorn only the one it has. Quart 0.22's
``ASGIWebsocketConnection.handle_messages`` reads ``event.get("bytes") or event["text"]``, which
for a binary frame without a ``text`` key (an empty one: ``b""`` is falsy) raises ``KeyError``
in Quart's receiver task and ends the connection with a traceback (issue 23.10). With both keys
the handler receives ``None`` for an empty binary frame and answers ``invalid_message``. No Quart
issue was found for this; the middleware is installed as Quart documents, ``app.asgi_app =
WebsocketReceive(app.asgi_app)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI application (typed loosely: Quart types its own scopes and events more narrowly).
ASGIApp = Callable[..., Awaitable[None]]


class WebsocketReceive:
    """See the module docstring; any other scope passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        async def receive_both() -> Message:
            event = await receive()
            if event["type"] == "websocket.receive":
                event.setdefault("bytes", None)
                event.setdefault("text", None)
            return event

        await self.app(scope, receive_both, send)
