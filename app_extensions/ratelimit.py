"""Inbound rate limits, cluster-wide: one GCRA bucket per (route class, API key or client IP) in Redis.

Every instance runs the same atomic Lua script against the same keys and Redis's own clock, so N
instances together enforce one limit. A limit is ``"requests/seconds"`` per route class
(``default``, ``ohlcv``, ``backfill``, ``ws``; ``RATE_LIMITS`` overrides ``DEFAULT_LIMITS``, "off"
lifts one). Answers carry ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``; a rejection is 429
``rate_limited`` with ``Retry-After``.

When Redis is unreachable the limiter fails open to a local in-memory GCRA of the same limits (so
each instance enforces the limit on its own until Redis is back) and readiness reports
``mode: local``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from quart import Quart, Response, current_app, g, request, websocket
from quart.typing import ResponseTypes

from app_extensions.auth import is_open_path
from app_extensions.redis_client import RedisClient, get_redis
from config import ConfigError
from core.errors import DataSourceError, RateLimited
from core.metrics import RATE_LIMIT_FALLBACKS, RATE_LIMIT_REJECTIONS

log = logging.getLogger(__name__)

#: ``ws``: handshakes per client IP (or key) allow bursts as Binance does (300 per 5 minutes), so
#: dashboards opening at once behind one NAT or proxy are not refused.
DEFAULT_LIMITS = {"default": "600/60", "ohlcv": "300/60", "backfill": "60/60", "ws": "300/300",
                  "auth_failures": "30/60"}
_UNITS = {"s": 1, "second": 1, "m": 60, "minute": 60, "h": 3600, "hour": 3600}
_IDENT = re.compile(r"[^0-9A-Za-z.:_-]")
_LOCAL_MAX_KEYS = 50_000

#: GCRA. KEYS[1]: the bucket's theoretical arrival time (ms). ARGV: emission interval (ms), limit,
#: peek (1: only tell whether a request would pass). Returns {allowed, remaining, retry_after_ms}.
#: Uses Redis's clock so instances agree.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = tonumber(ARGV[1])
local window = emission * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - window
if allow_at > now then
  return {0, 0, math.ceil(allow_at - now)}
end
if ARGV[3] == '1' then return {1, 0, 0} end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
return {1, math.floor((window - (new_tat - now)) / emission + 1e-6), 0}
"""


@dataclass(frozen=True)
class Limit:
    """``requests`` per ``seconds``; a burst of up to ``requests`` is allowed."""

    requests: int
    seconds: float

    @property
    def emission_ms(self) -> float:
        return self.seconds * 1000 / self.requests

    @classmethod
    def parse(cls, text: str, name: str = "RATE_LIMITS") -> Limit | None:
        """``"600/60"``, ``"10/s"``, ``"100/minute"``; ``"off"`` gives None (no limit)."""
        raw = str(text).strip().lower()
        if raw in ("off", "none", ""):
            return None
        count, _, per = raw.partition("/")
        try:
            requests = int(count)
            seconds = float(_UNITS[per]) if per in _UNITS else float(per)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{name}: {text!r} is not 'requests/seconds'") from exc
        if requests < 1 or not 0 < seconds < math.inf:  # also refuses nan
            raise ConfigError(f"{name}: {text!r} needs positive requests and seconds")
        return cls(requests, seconds)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float


class LocalGcra:
    """The same GCRA in process memory, used while Redis is down (bounded number of keys)."""

    def __init__(self) -> None:
        self._tat: OrderedDict[str, float] = OrderedDict()

    def take(self, key: str, limit: Limit, now_ms: float | None = None, peek: bool = False) -> Decision:
        now = time.monotonic() * 1000 if now_ms is None else now_ms
        emission, window = limit.emission_ms, limit.emission_ms * limit.requests
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + emission
        allow_at = new_tat - window
        if allow_at > now:
            return Decision(False, limit.requests, 0, (allow_at - now) / 1000)
        if peek:
            return Decision(True, limit.requests, 0, 0.0)
        self._tat[key] = new_tat
        self._tat.move_to_end(key)
        while len(self._tat) > _LOCAL_MAX_KEYS:
            self._tat.popitem(last=False)
        remaining = math.floor((window - (new_tat - now)) / emission + 1e-6)
        return Decision(True, limit.requests, remaining, 0.0)


class RateLimiter:
    """Cluster-wide inbound limiter. Reach it with ``get_ratelimiter(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.enabled = False
        self.limits: dict[str, Limit | None] = {}
        self.trust_forwarded = False
        self.redis: RedisClient | None = None
        self.local = LocalGcra()
        #: "redis" while decisions are taken in Redis, "local" after a fallback, "off" if disabled.
        self.mode = "redis"
        self.last_error: str | None = None
        self._scripts: dict[int, Any] = {}
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
        self.redis = get_redis(app)
        self.mode = "redis" if self.enabled else "off"
        app.extensions["ratelimit"] = self
        app.before_request(self._before_request)
        app.before_websocket(self._before_websocket)
        app.after_request(self._after_request)
        app.after_websocket(self._after_websocket)

    def limit_for(self, route_class: str) -> Limit | None:
        return self.limits.get(route_class, self.limits.get("default"))

    async def hit(self, route_class: str, identity: str, peek: bool = False) -> Decision | None:
        """Take one request from the bucket (``peek``: only look); None when the class is unlimited."""
        limit = self.limit_for(route_class)
        if limit is None:
            return None
        assert self.redis is not None
        key = self.redis.key("rl", route_class, identity)
        try:
            allowed, remaining, retry_ms = await self.redis.run(
                lambda r: self._script(r)(keys=[key], args=[limit.emission_ms, limit.requests, int(peek)])
            )
        except DataSourceError as exc:
            if self.mode != "local":
                log.warning("rate limiter: Redis unavailable, limiting locally: %s", exc.details)
            self.mode, self.last_error = "local", str((exc.details or {}).get("error"))
            RATE_LIMIT_FALLBACKS.inc()
            return self.local.take(f"{route_class}:{identity}", limit, peek=peek)
        self.mode, self.last_error = "redis", None
        return Decision(bool(allowed), limit.requests, int(remaining), int(retry_ms) / 1000)

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
        key_id = getattr(g, "api_key_id", None)
        if key_id:
            return f"key:{key_id}"
        addr = remote_addr or "unknown"
        if self.trust_forwarded and headers.get("X-Forwarded-For"):
            addr = headers["X-Forwarded-For"].split(",")[-1].strip()
        return "ip:" + _IDENT.sub("_", addr)[:64]

    async def _check(self, route_class: str, identity: str) -> None:
        decision = await self.hit(route_class, identity)
        if decision is None:
            return
        g.rate_limit = decision
        if not decision.allowed:
            RATE_LIMIT_REJECTIONS.labels(route_class).inc()
            raise RateLimited(
                f"rate limit of {decision.limit} requests exceeded; retry later",
                retry_after=max(decision.retry_after, 0.001),
            )

    async def guard_auth_failures(self, identity: str, failed: bool) -> None:
        """Brute-force guard (``auth_failures`` class, per client IP): before a key look-up
        (``failed`` False) raise 429 when the client used up its failures; after a failed one, count
        it. Keeps wrong-key floods from reaching the database."""
        if not self.enabled:
            return
        decision = await self.hit("auth_failures", identity, peek=not failed)
        if decision is not None and not decision.allowed:
            g.rate_limit = decision  # API.md: every 429 carries X-RateLimit-Limit and -Remaining
            RATE_LIMIT_REJECTIONS.labels("auth_failures").inc()
            raise RateLimited("too many requests with a wrong API key; retry later",
                              retry_after=max(decision.retry_after, 0.001))

    async def _before_request(self) -> None:
        if not self.enabled or request.method == "OPTIONS" or is_open_path(request.path):
            return
        identity = self.client_identity(request.headers, request.remote_addr)
        await self._check(route_class(request.path), identity)

    async def _before_websocket(self) -> None:
        if self.enabled:
            await self._check("ws", self.client_identity(websocket.headers, websocket.remote_addr))

    async def _after_request(self, response: Response) -> Response:
        decision: Decision | None = getattr(g, "rate_limit", None)
        if decision is not None:
            response.headers["X-RateLimit-Limit"] = str(decision.limit)
            response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
        return response


    async def _after_websocket(self, response: ResponseTypes | None) -> ResponseTypes | None:
        # A refused handshake (401, 429) is an HTTP response: it carries the same headers.
        if isinstance(response, Response):
            return await self._after_request(response)
        return response


def route_class(path: str) -> str:
    """The limit class of a request path (fixed names; never the path itself)."""
    if path == "/api/v1/ohlcv":
        return "ohlcv"
    if path.startswith(("/api/v1/backfill", "/api/v1/gaps")):
        return "backfill"
    return "default"


def get_ratelimiter(app: Quart | None = None) -> RateLimiter:
    limiter: RateLimiter = (app or current_app).extensions["ratelimit"]
    return limiter
