"""Requests whose framing is ambiguous are refused before the app sees them, and request bodies
have an overall deadline.

- A request carrying both ``Content-Length`` and ``Transfer-Encoding`` is how requests are
  smuggled past a proxy that reads the other header (RFC 9112, section 6.3). The servers we run
  under (Hypercorn's h11, Uvicorn) read it as chunked and keep the connection open; here it is
  answered 400 ``invalid_parameter`` with ``Connection: close``, so the server closes the
  connection and nothing the client sent after the body is read as another request. (The shipped
  nginx refuses such requests itself, before they reach an instance.)
- ``REQUEST_BODY_TIMEOUT`` is Quart's ``BODY_TIMEOUT``: a handler reading the body (every JSON
  endpoint) waits at most that long for all of it, however slowly it trickles in, then answers
  408.

A pure ASGI middleware (Starlette's shape), installed by ``RequestGuard(app)``.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Quart

from app_extensions.request_context import new_request_id, request_id_from
from core.errors import InvalidParameter

_AMBIGUOUS = InvalidParameter("a request may not carry both Content-Length and Transfer-Encoding")
_BODY = json.dumps(_AMBIGUOUS.to_dict(), separators=(",", ":")).encode() + b"\n"


class RequestGuard:
    """The ASGI wrapper; ``RequestGuard(app)`` installs it and sets the body deadline."""

    def __init__(self, app: Quart | None = None) -> None:
        self.inner: Any = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        app.config["BODY_TIMEOUT"] = float(app.config["REQUEST_BODY_TIMEOUT"])
        self.inner = app.asgi_app
        app.asgi_app = self  # type: ignore[method-assign, assignment]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"transfer-encoding" in names and b"content-length" in names:
                await self._refuse(scope, send)
                return
        await self.inner(scope, receive, send)

    @staticmethod
    async def _refuse(scope: dict[str, Any], send: Any) -> None:
        sent = dict(scope["headers"]).get(b"x-request-id")
        rid = request_id_from(sent.decode("latin-1")) if sent else new_request_id()
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode()),
            (b"connection", b"close"), (b"x-request-id", rid.encode())]})
        await send({"type": "http.response.body", "body": _BODY})
