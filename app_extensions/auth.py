"""API keys: off by default, on with ``AUTH_ENABLED``.

Keys are stored hashed only: ``API_KEYS`` (sha256 hex digests, a JSON list or comma-separated) and,
when ``API_KEYS_FROM_DB``, the ``api_keys`` table (migration 020; revoked keys have ``revoked_at``).
REST clients send ``X-API-Key``; WebSocket clients send the same header (or, for old clients, an
``api_key`` query parameter) in the handshake, or no key there and ``{"op": "auth", "api_key"}`` as
their first message (``blueprints/ws_auth.py``). A missing or wrong key answers 401 ``unauthorized``.

``/health``, ``/health/ready``, the OpenAPI document, the docs page and the chart page with its
files (``/``, ``/assets/``) stay open (the chart page asks for a key when REST answers 401); ``/metrics`` is
open too unless ``METRICS_TOKEN`` is set, in which case it needs ``Authorization: Bearer <token>``
(whether or not API keys are on).

The authenticated key's id (the first 16 hex digits of its digest, never the key) is put in
``g.api_key_id`` for the rate limiter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable
from typing import Any

from quart import Quart, Request, current_app, g, websocket

from app_extensions.db_pool import get_database
from app_extensions.hooks import get_hooks
from config import ConfigError
from core.errors import Unauthorized
from core.metrics import AUTH_FAILURES

log = logging.getLogger(__name__)

#: Paths that never need an API key (exact, or a prefix ending in "/").
OPEN_PATHS = ("/health", "/health/ready", "/metrics", "/api/v1/openapi.json", "/api/v1/docs", "/", "/assets")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CACHE_MAX = 10_000


def hash_key(key: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hashes(raw: str | list[str] | tuple[str, ...] | None) -> frozenset[str]:
    """``API_KEYS`` as a set of digests; raises ``ConfigError`` naming a malformed entry."""
    if not raw:
        return frozenset()
    items: Any = raw
    if isinstance(raw, str):
        text = raw.strip()
        items = json.loads(text) if text.startswith("[") else text.split(",")
    out = set()
    for item in items:
        digest = str(item).strip().lower()
        if not digest:
            continue
        if not _HEX64.match(digest):
            raise ConfigError("API_KEYS must hold sha256 hex digests (64 hex digits), not keys")
        out.add(digest)
    return frozenset(out)


_OPEN_EXACT = frozenset(OPEN_PATHS)
_OPEN_PREFIXES = tuple(p + "/" for p in OPEN_PATHS)


def is_open_path(path: str) -> bool:
    return path in _OPEN_EXACT or path.startswith(_OPEN_PREFIXES)


class ApiKeyAuth:
    """API-key checks for REST and WebSocket. Reach it with ``get_auth(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.enabled = False
        self.hashes: frozenset[str] = frozenset()
        #: Key ids (first 16 hex digits of the digest) of OPERATOR_KEYS.
        self.operator_ids: frozenset[str] = frozenset()
        self.use_db = True
        self.cache_ttl = 30.0
        self.metrics_token = ""
        # digest -> (valid, expires at): answers of the api_keys table, negative ones included.
        self._cache: dict[str, tuple[bool, float]] = {}
        self._app: Quart | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        cfg = app.config
        self.enabled = bool(cfg["AUTH_ENABLED"])
        operators = parse_key_hashes(cfg.get("OPERATOR_KEYS"))
        self.hashes = parse_key_hashes(cfg["API_KEYS"]) | operators
        self.operator_ids = frozenset(digest[:16] for digest in operators)
        self.use_db = bool(cfg["API_KEYS_FROM_DB"])
        self.cache_ttl = float(cfg["API_KEY_CACHE_TTL"])
        self.metrics_token = str(cfg["METRICS_TOKEN"] or "")
        if self.enabled and not self.hashes and not self.use_db:
            raise ConfigError("AUTH_ENABLED needs API_KEYS or API_KEYS_FROM_DB")
        self._app = app
        app.extensions["auth"] = self
        if self.enabled or self.metrics_token:  # else there is nothing to check per request
            get_hooks(app).before(self._before_request)
        app.before_websocket(self._before_websocket)

    async def authenticate(self, presented: str | None, client: tuple[Any, str | None] | None = None) -> str:
        """The key id for a presented key; raises ``Unauthorized`` when missing or unknown.

        ``client`` (headers, remote address) lets the rate limiter's ``auth_failures`` class count
        the client's wrong keys: past its limit a wrong key answers 429 instead of 401. The count is
        taken after the look-up, so a valid key is served whatever other keys its address sent
        (offices and NAT share one); repeated wrong keys are answered from the look-up cache.
        """
        if not presented:
            AUTH_FAILURES.labels("missing").inc()
            raise Unauthorized("an API key is required (X-API-Key header)")
        digest = hash_key(presented)
        if any(hmac.compare_digest(digest, known) for known in self.hashes):
            return digest[:16]
        if await self._in_db(digest):
            return digest[:16]
        AUTH_FAILURES.labels("invalid").inc()
        limiter: Any = self._app.extensions.get("ratelimit") if self._app is not None else None
        if limiter is not None and client is not None:
            await limiter.guard_auth_failures(limiter.client_identity(client[0], client[1]))
        raise Unauthorized("the API key is not valid")

    async def _in_db(self, digest: str) -> bool:
        if not self.use_db or self._app is None:
            return False
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        async with get_database(self._app).acquire() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest
            )
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (found is not None, now + self.cache_ttl)
        return found is not None

    def is_operator(self, key_id: str | None) -> bool:
        """Whether the authenticated key (its id) is one of ``OPERATOR_KEYS``."""
        return key_id is not None and key_id in self.operator_ids

    async def valid_digests(self, digests: set[str]) -> set[str]:
        """Those of ``digests`` that are valid keys now: in ``API_KEYS``, or in the ``api_keys``
        table and not revoked (read now, not from the cache: open WebSockets are re-checked)."""
        valid = {d for d in digests if d in self.hashes}
        rest = sorted(digests - valid)
        if rest and self.use_db and self._app is not None:
            async with get_database(self._app).acquire() as conn:
                rows = await conn.fetch("SELECT key_hash FROM api_keys WHERE key_hash = ANY($1::text[])"
                                        " AND revoked_at IS NULL", rest)
            valid.update(str(row["key_hash"]) for row in rows)
        return valid

    def check_metrics_token(self, authorization: str) -> None:
        """Raise ``Unauthorized`` unless ``METRICS_TOKEN`` is unset or presented as a bearer token."""
        if not self.metrics_token:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), self.metrics_token):
            AUTH_FAILURES.labels("metrics_token").inc()
            raise Unauthorized("/metrics needs Authorization: Bearer <METRICS_TOKEN>")

    def _before_request(self, req: Request, ctx_g: Any) -> Awaitable[None] | None:
        if req.method == "OPTIONS":  # CORS preflights carry no credentials
            return None
        path = req.path
        if path == "/metrics":
            self.check_metrics_token(req.headers.get("Authorization", ""))
            return None
        if not self.enabled or is_open_path(path):
            return None
        return self._authenticate_request(req, ctx_g)

    async def _authenticate_request(self, req: Request, ctx_g: Any) -> None:
        ctx_g.api_key_id = await self.authenticate(req.headers.get("X-API-Key"), (req.headers, req.remote_addr))

    async def _before_websocket(self) -> None:
        # A handshake without a key is let through: its first message must then be
        # {"op": "auth", "api_key"} (blueprints/ws_auth.py). A wrong key is refused here (401).
        if websocket_key() is not None:
            await authenticate_websocket()


def websocket_key() -> str | None:
    """The key presented in the WebSocket handshake (``X-API-Key``, else ``?api_key=``), if any."""
    return websocket.headers.get("X-API-Key") or websocket.args.get("api_key") or None


async def authenticate_websocket() -> str | None:
    """Check the WebSocket handshake's key (``X-API-Key`` header or ``api_key`` parameter).

    Returns the key id (None when auth is off); raises ``Unauthorized`` before the handshake is
    accepted, which answers it with 401. Registered as a ``before_websocket`` hook, so the WS
    blueprint need not call it; calling it again is cheap (the result is kept in ``g``).
    """
    auth = get_auth(current_app)
    if not auth.enabled:
        return None
    done: str | None = getattr(g, "api_key_id", None)
    if done is not None:
        return done
    presented = websocket_key()
    g.api_key_id = await auth.authenticate(presented, (websocket.headers, websocket.remote_addr))
    return str(g.api_key_id)


def get_auth(app: Quart) -> ApiKeyAuth:
    auth: ApiKeyAuth = app.extensions["auth"]
    return auth
