"""CORS for the REST API and the WebSocket ``Origin`` allow-list, both from config.

``CORS_ORIGINS``: comma-separated origins (``https://dash.example.com``), origins with a port
wildcard (``http://localhost:*``), or ``*``. In development the default allows
``http://localhost:*`` and ``http://127.0.0.1:*`` (a dashboard on ``localhost:3000`` just works);
elsewhere it is empty, which sends no CORS headers, so browsers on other origins cannot read
answers: list your dashboards' origins in production. Preflights (``OPTIONS`` with
``Access-Control-Request-Method``) are answered without auth or rate limiting.

``WS_ALLOWED_ORIGINS``: comma-separated origins (port wildcards too) allowed to open
``/api/v1/ws``. A handshake whose ``Origin`` is not listed is refused with 403 ``forbidden_origin``;
one without ``Origin`` (not a browser) is allowed. Empty (the default) allows any origin.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Request, Response, websocket

from app_extensions.hooks import get_hooks
from app_extensions.request_context import scope_header
from config import names
from core.errors import APIError

#: Headers a browser script may read from our answers.
EXPOSED_HEADERS = ("X-Request-ID, X-RateLimit-Limit, X-RateLimit-Remaining, Retry-After, "
                   "X-Data-Source, X-Data-Incomplete, X-Backfill-Job, ETag")
ALLOWED_HEADERS = "Content-Type, X-API-Key, X-Request-ID, If-None-Match, Authorization"


def parse_origins(raw: str | list[str] | None) -> frozenset[str]:
    """Comma-separated (or a list of) origins, without trailing slashes."""
    return frozenset(o.rstrip("/") for o in names(raw))


def origin_allowed(origin: str, allowed: frozenset[str]) -> bool:
    """``origin`` is listed, or matches an entry with a port wildcard (``http://localhost:*``
    allows ``http://localhost`` on any port), or ``*`` is listed."""
    origin = origin.rstrip("/")
    if not origin:
        return False
    if "*" in allowed or origin in allowed:
        return True
    base, _, port = origin.rpartition(":")
    if port.isascii() and port.isdigit() and "//" in base:  # scheme://host:port
        return f"{base}:*" in allowed
    return f"{origin}:*" in allowed  # scheme://host, default port


class Cors:
    """Adds CORS headers to allowed origins and checks WebSocket origins."""

    def __init__(self, app: Quart | None = None) -> None:
        self.origins: frozenset[str] = frozenset()
        self.ws_origins: frozenset[str] = frozenset()
        self.max_age = 600
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        self.origins = parse_origins(app.config["CORS_ORIGINS"])
        self.ws_origins = parse_origins(app.config["WS_ALLOWED_ORIGINS"])
        app.extensions["cors"] = self
        if self.origins:  # else no answer gets CORS headers: no per-request work
            get_hooks(app).after(self._after_request)
        if self.ws_origins:
            app.before_websocket(self._before_websocket)

    def allows(self, origin: str) -> bool:
        return origin_allowed(origin, self.origins)

    def ws_allows(self, origin: str | None) -> bool:
        return not self.ws_origins or not origin or origin_allowed(origin, self.ws_origins)

    def _after_request(self, req: Request, ctx_g: Any, response: Response) -> Response:
        origin = scope_header(req.scope, b"origin")
        if not origin or not self.allows(origin):
            return response
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in self.origins else origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.vary.add("Origin")
        if req.method == "OPTIONS" and "Access-Control-Request-Method" in req.headers:
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = str(self.max_age)
        return response

    async def _before_websocket(self) -> None:
        check_websocket_origin(self)


def check_websocket_origin(cors: Cors) -> None:
    """Raise 403 ``forbidden_origin`` when the handshake's ``Origin`` is not allowed."""
    origin = websocket.headers.get("Origin")
    if not cors.ws_allows(origin):
        raise APIError(403, "forbidden_origin", "this Origin may not open the WebSocket")
