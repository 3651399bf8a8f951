"""Inbound rate limits, cluster-wide: one GCRA bucket per (route class, API key or client IP) in Redis.

Every instance runs the same atomic Lua script against the same keys and Redis's own clock, so N
instances together enforce one limit. Tokens are taken from Redis in small leases and spent locally
(``ratelimit_buckets.py``), and a refusal is kept locally until Redis said the next token frees up,
so most requests, and every refused one, cost no Redis round trip. A refused request goes through
the same hooks as any other answer; its body is encoded once per limit, so a 429 costs less than a
cached 200. ``docs/performance.md`` gives the exact guarantee across N instances.

A limit is ``"requests/seconds"`` per route class (``default``, ``ohlcv``, ``backfill``, ``ws``;
``RATE_LIMITS`` overrides ``DEFAULT_LIMITS``, "off" lifts one). Answers carry ``X-RateLimit-Limit``
and ``X-RateLimit-Remaining``; a rejection is 429 ``rate_limited`` with ``Retry-After``.

When Redis is unreachable the limiter fails open to a local in-memory GCRA of the same limits (so
each instance enforces the limit on its own until Redis is back) and readiness reports
``mode: local``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable
from typing import Any

from quart import Quart, Request, Response, current_app, g, websocket
from quart.typing import ResponseTypes

from app_extensions.auth import is_open_path
from app_extensions.errors import MAX_RETRY_AFTER
from app_extensions.hooks import get_hooks
from app_extensions.ratelimit_buckets import GCRA_LUA, Decision, LeasedBuckets, Limit, LocalGcra
from app_extensions.redis_client import RedisClient, get_redis
from config import ConfigError
from core.errors import DataSourceError, RateLimited
from core.metrics import RATE_LIMIT_FALLBACKS, RATE_LIMIT_REJECTIONS

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LIMITS", "Decision", "Limit", "LocalGcra", "RateLimiter", "get_ratelimiter", "route_class"]

#: ``ws``: handshakes per client IP (or key) allow bursts as Binance does (300 per 5 minutes), so
#: dashboards opening at once behind one NAT or proxy are not refused.
DEFAULT_LIMITS = {"default": "600/60", "ohlcv": "300/60", "backfill": "60/60", "ws": "300/300",
                  "auth_failures": "30/60"}
_IDENT = re.compile(r"[^0-9A-Za-z.:_-]")
_IDENTITIES_MAX = 10_000


def route_class(path: str) -> str:
    """The limit class of a request path (fixed names; never the path itself)."""
    if path == "/api/v1/ohlcv":
        return "ohlcv"
    if path.startswith(("/api/v1/backfill", "/api/v1/gaps")):
        return "backfill"
    return "default"


class RateLimiter:
    """Cluster-wide inbound limiter. Reach it with ``get_ratelimiter(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.enabled = False
        self.limits: dict[str, Limit | None] = {}
        self.trust_forwarded = False
        self.auth_enabled = False
        self.redis: RedisClient | None = None
        self.local = LocalGcra()
        self.buckets = LeasedBuckets(self._take)
        #: "redis" while decisions are taken in Redis, "local" after a fallback, "off" if disabled.
        self.mode = "redis"
        self.last_error: str | None = None
        self._scripts: dict[int, Any] = {}
        self._identities: dict[tuple[str | None, str | None], str] = {}
        #: (route class, limit in requests) -> the body of its 429, encoded once
        self._bodies: dict[tuple[str, int], bytes] = {}
        #: route class -> its child of the rejections counter
        self._rejections: dict[str, Any] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        cfg = app.config
        self.enabled = bool(cfg["RATE_LIMIT_ENABLED"])
        unknown = set(cfg["RATE_LIMITS"] or {}) - set(DEFAULT_LIMITS)
        if unknown:
            raise ConfigError(f"RATE_LIMITS: unknown route class(es) {sorted(unknown)}; "
                              f"one of {', '.join(DEFAULT_LIMITS)}")
        merged = {**DEFAULT_LIMITS, **(cfg["RATE_LIMITS"] or {})}
        self.limits = {cls: Limit.parse(text) for cls, text in merged.items()}
        self.trust_forwarded = bool(cfg["TRUST_FORWARDED_FOR"])
        self.auth_enabled = bool(cfg["AUTH_ENABLED"])
        self.redis = get_redis(app)
        self.mode = "redis" if self.enabled else "off"
        app.extensions["ratelimit"] = self
        hooks = get_hooks(app)
        hooks.before(self._before_request)
        hooks.after(self._after_request)
        app.before_websocket(self._before_websocket)
        app.after_websocket(self._after_websocket)

    def configure(self, enabled: bool, limits: dict[str, Limit | None]) -> None:
        """Switch the limiter and replace some classes' limits at run time (benchmarks, tests)."""
        self.enabled = enabled
        self.mode = "redis" if enabled else "off"
        self.limits.update(limits)
        self.buckets.clear()

    def limit_for(self, route_class: str) -> Limit | None:
        return self.limits.get(route_class, self.limits.get("default"))

    async def hit(self, route_class: str, identity: str, peek: bool = False) -> Decision | None:
        """Take one request from the bucket (``peek``: only look, in Redis); None when the class is
        unlimited."""
        limit = self.limit_for(route_class)
        if limit is None:
            return None
        try:
            if peek:
                granted, remaining, retry_after = await self._take(f"{route_class}:{identity}", limit, 1, True)
                return Decision(granted > 0, limit.requests, remaining, retry_after)
            decision = await self.buckets.hit(f"{route_class}:{identity}", limit)
        except DataSourceError as exc:
            if self.mode != "local":
                log.warning("rate limiter: Redis unavailable, limiting locally: %s", exc.details)
            self.mode, self.last_error = "local", str((exc.details or {}).get("error"))
            RATE_LIMIT_FALLBACKS.inc()
            return self.local.take(f"{route_class}:{identity}", limit, peek=peek)
        self.mode, self.last_error = "redis", None
        return decision

    async def _take(self, key: str, limit: Limit, wanted: int, peek: bool = False) -> tuple[int, int, float]:
        """Up to ``wanted`` tokens from ``key``'s bucket in Redis: (granted, remaining, retry_after s)."""
        assert self.redis is not None
        full = self.redis.key("rl", key)
        args = [limit.emission_ms, limit.requests, int(peek), wanted]
        granted, remaining, retry_ms = await self.redis.run(
            lambda r: self._script(r)(keys=[full], args=args))
        return int(granted), int(remaining), int(retry_ms) / 1000

    def _script(self, client: Any) -> Any:
        script = self._scripts.get(id(client))
        if script is None:
            script = self._scripts[id(client)] = client.register_script(GCRA_LUA)
        return script

    def status(self) -> dict[str, Any]:
        """For readiness (after its Redis check): ``{"ok", "mode", "error"}``. The mode follows
        Redis's availability, so it is ``redis`` again as soon as Redis answers; ``ok`` is false
        while decisions are taken locally."""
        if self.enabled and self.redis is not None:
            self.mode = "redis" if self.redis.available else "local"
        if self.mode != "local":
            self.last_error = None
        return {"ok": self.mode != "local", "mode": self.mode, "error": self.last_error}

    def client_identity(self, headers: Any, remote_addr: str | None) -> str:
        return self.identity(g.get("api_key_id"), headers, remote_addr)

    def identity(self, key_id: str | None, headers: Any, remote_addr: str | None) -> str:
        """Whose bucket a request spends: its API key's, else its IP's."""
        if key_id:
            return f"key:{key_id}"
        forwarded = headers.get("X-Forwarded-For") if self.trust_forwarded else None
        return self.ip_identity(remote_addr, forwarded)

    def ip_identity(self, remote_addr: str | None, forwarded: str | None) -> str:
        known = self._identities.get((remote_addr, forwarded))
        if known is not None:
            return known
        addr = forwarded.split(",")[-1].strip() if forwarded else remote_addr or "unknown"
        if len(self._identities) >= _IDENTITIES_MAX:
            self._identities.clear()
        known = self._identities[(remote_addr, forwarded)] = "ip:" + _IDENT.sub("_", addr)[:64]
        return known

    async def _check(self, route_class: str, identity: str) -> None:
        decision = await self.hit(route_class, identity)
        if decision is not None:
            g.rate_limit = decision
            self._refuse(decision, route_class)

    def _refuse(self, decision: Decision, route_class: str) -> None:
        """Raise 429 unless ``decision`` admits the request."""
        if not decision.allowed:
            RATE_LIMIT_REJECTIONS.labels(route_class).inc()
            limit = self.limit_for(route_class)
            raise RateLimited.exceeded(  # the message names the window (docs/api.md, 24.19)
                decision.limit, limit.seconds if limit is not None else 0.0, route_class,
                retry_after=max(decision.retry_after, 0.001))

    async def guard_auth_failures(self, identity: str, failed: bool) -> None:
        """Brute-force guard (``auth_failures`` class, per client IP): before a key look-up
        (``failed`` False) raise 429 when the client used up its failures; after a failed one, count
        it. Keeps wrong-key floods from reaching the database."""
        if not self.enabled:
            return
        decision = await self.hit("auth_failures", identity, peek=not failed)
        if decision is not None and not decision.allowed:
            g.rate_limit = decision  # docs/api.md: every 429 carries X-RateLimit-Limit and -Remaining
            RATE_LIMIT_REJECTIONS.labels("auth_failures").inc()
            raise RateLimited("too many requests with a wrong API key; retry later",
                              retry_after=max(decision.retry_after, 0.001))

    def _before_request(self, req: Request, ctx_g: Any) -> Response | Awaitable[Response | None] | None:
        if not self.enabled:
            return None
        path = req.path
        if req.method == "OPTIONS" or is_open_path(path):
            return None
        cls = route_class(path)
        limit = self.limit_for(cls)
        if limit is None:
            return None
        identity = self.identity(ctx_g.get("api_key_id"), req.headers, req.remote_addr)
        decision = self.buckets.spend(f"{cls}:{identity}", limit)  # most requests: no Redis call
        if decision is None:
            return self._check_request(ctx_g, cls, identity)
        self.mode, self.last_error = "redis", None
        return self._decide(ctx_g, decision, cls)

    async def _check_request(self, ctx_g: Any, cls: str, identity: str) -> Response | None:
        decision = await self.hit(cls, identity)
        return None if decision is None else self._decide(ctx_g, decision, cls)

    def _decide(self, ctx_g: Any, decision: Decision, cls: str) -> Response | None:
        """None to admit the request, else its 429 (``X-RateLimit-*`` are added after it, as on
        every answer, from ``g.rate_limit``)."""
        ctx_g.rate_limit = decision
        return None if decision.allowed else self.refusal(decision, cls)

    def refusal(self, decision: Decision, cls: str) -> Response:
        """The 429 of a refused request: what ``RateLimited`` answers through the error handler
        (``errors.error_response``), with the body encoded once per limit."""
        rejections = self._rejections.get(cls)
        if rejections is None:
            rejections = self._rejections[cls] = RATE_LIMIT_REJECTIONS.labels(cls)
        rejections.inc()
        body = self._bodies.get((cls, decision.limit))
        if body is None:
            limit = self.limit_for(cls)
            exc = RateLimited.exceeded(decision.limit, limit.seconds if limit is not None else 0.0, cls)
            body = json.dumps(exc.to_dict(), separators=(",", ":")).encode() + b"\n"
            self._bodies[(cls, decision.limit)] = body
        retry_after = max(1, math.ceil(min(decision.retry_after, MAX_RETRY_AFTER)))
        return Response(body, 429, {"Content-Type": "application/json", "Retry-After": str(retry_after)})

    async def _before_websocket(self) -> None:
        if self.enabled:
            await self._check("ws", self.client_identity(websocket.headers, websocket.remote_addr))

    def _after_request(self, req: Request | None, ctx_g: Any, response: Response) -> Response:
        decision: Decision | None = ctx_g.get("rate_limit")
        if decision is not None:
            headers = response.headers
            headers["X-RateLimit-Limit"] = str(decision.limit)
            headers["X-RateLimit-Remaining"] = str(decision.remaining)
        return response

    async def _after_websocket(self, response: ResponseTypes | None) -> ResponseTypes | None:
        # A refused handshake (401, 429) is an HTTP response: it carries the same headers.
        if isinstance(response, Response):
            return self._after_request(None, g, response)
        return response


def get_ratelimiter(app: Quart | None = None) -> RateLimiter:
    limiter: RateLimiter = (app or current_app).extensions["ratelimit"]
    return limiter
