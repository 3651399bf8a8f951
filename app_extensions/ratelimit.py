"""Inbound rate limits, cluster-wide: one GCRA bucket per (route class, API key or client IP) in Redis.

Every instance runs the same atomic Lua script (the GCRA of the limits' store,
``services.upstream.store``) against the same keys and Redis's own clock, so N instances together
enforce one limit. Tokens are taken from Redis in small leases and spent locally
(``ratelimit_buckets.py``), and a refusal is kept locally until Redis said the next token frees up,
so most requests, and every refused one, cost no Redis round trip. A refused request raises
``RateLimited`` and is answered by the error handlers and hooks as any other error is.
``docs/performance.md`` gives the exact guarantee across N instances.

A limit is ``"requests/seconds"`` per route class (``default``, ``ohlcv``, ``export``, ``backfill``, ``ws``;
``RATE_LIMITS`` is merged over its declared default, "off" lifts one). Answers carry ``X-RateLimit-Limit``
and ``X-RateLimit-Remaining``; a rejection is 429 ``rate_limited`` with ``Retry-After``.

When Redis is unreachable the limiter fails open to the store's in-memory GCRA with the same limits
(so each instance enforces the limit on its own until Redis is back) and readiness reports
``mode: local``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable
from typing import Any

from quart import Quart, Request, Response, current_app, g, websocket
from quart.typing import ResponseTypes

from app_extensions.auth import is_open_path
from app_extensions.hooks import get_hooks
from app_extensions.ratelimit_buckets import Decision, LeasedBuckets, Limit, LocalGcra
from app_extensions.redis_client import RedisClient, get_redis
from config import ConfigError, Network, declared, parse_trusted_proxies
from core.errors import DataSourceError, RateLimited
from core.metrics import RATE_LIMIT_FALLBACKS, RATE_LIMIT_REJECTIONS
from services.upstream.store import Store

log = logging.getLogger(__name__)

__all__ = ["Decision", "Limit", "LocalGcra", "RateLimiter", "get_ratelimiter", "route_class"]

_IDENT = re.compile(r"[^0-9A-Za-z.:_-]")
_IDENTITIES_MAX = 10_000
#: IPv6 clients are limited per /64 (one host's or one customer's usual allocation), as IPv4
#: clients are per address: rotating addresses inside one's own /64 buys no more requests.
IPV6_PREFIX = 64


def client_address(remote_addr: str | None, forwarded: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then, walking
    ``X-Forwarded-For`` from the right (each proxy appends the peer it saw), the first address not
    in ``trusted``. A hop a client wrote itself is only reached if every hop right of it is trusted."""
    addr = remote_addr or "unknown"
    if not (trusted and forwarded and _in(addr, trusted)):
        return addr
    for hop in reversed(forwarded.split(",")):
        addr = hop.strip()
        if not _in(addr, trusted):
            return addr
    return addr  # every hop is a proxy: the leftmost one


def _in(addr: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def address_bucket(addr: str) -> str:
    """The limit bucket of an address: IPv4 as is, IPv6 by its /64 (IPv4-mapped ones as IPv4)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return _IDENT.sub("_", addr)[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def route_class(path: str) -> str:
    """The limit class of a request path (fixed names; never the path itself). ``/udf/history``
    reads bars as ``/ohlcv`` does, so it spends the same ``ohlcv`` budget."""
    if path in ("/api/v1/ohlcv", "/udf/history"):
        return "ohlcv"
    if path == "/api/v1/export":
        return "export"
    if path.startswith(("/api/v1/backfill", "/api/v1/gaps")):
        return "backfill"
    return "default"


class RateLimiter:
    """Cluster-wide inbound limiter. Reach it with ``get_ratelimiter(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.enabled = False
        self.limits: dict[str, Limit | None] = {}
        #: Peers whose X-Forwarded-For is believed (``TRUSTED_PROXIES``); read it only then.
        self.trusted_proxies: tuple[Network, ...] = ()
        self.trust_forwarded = False
        self.auth_enabled = False
        self.redis: RedisClient | None = None
        #: The buckets: the store's Redis GCRA (leased from), its memory one while Redis fails.
        self.store = Store()
        self.local = LocalGcra(self.store.memory)
        self.buckets = LeasedBuckets(self._take)
        #: "redis" while decisions are taken in Redis, "local" after a fallback, "off" if disabled.
        self.mode = "redis"
        self.last_error: str | None = None
        self._identities: dict[tuple[str | None, str | None], str] = {}
        #: route class -> its child of the rejections counter
        self._rejections: dict[str, Any] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        cfg = app.config
        self.enabled = bool(cfg["RATE_LIMIT_ENABLED"])
        defaults = declared("RATE_LIMITS").default
        unknown = set(cfg["RATE_LIMITS"] or {}) - set(defaults)
        if unknown:
            raise ConfigError(f"RATE_LIMITS: unknown route class(es) {sorted(unknown)}; "
                              f"one of {', '.join(defaults)}")
        merged = {**defaults, **(cfg["RATE_LIMITS"] or {})}
        self.limits = {cls: Limit.parse(text) for cls, text in merged.items()}
        self.trusted_proxies = parse_trusted_proxies(cfg["TRUSTED_PROXIES"])
        self.trust_forwarded = bool(self.trusted_proxies)
        self.auth_enabled = bool(cfg["AUTH_ENABLED"])
        self.redis = get_redis(app)
        self.store = Store(self.redis, self.store.memory)  # the memory LocalGcra decides in
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
        assert self.store.shared is not None
        granted, remaining, retry_ms = await self.store.shared.gcra(
            ("rl", key), limit.emission_ms, limit.requests, wanted, partial=True, peek=peek)
        return granted, remaining, retry_ms / 1000

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
        forwarded = None
        if self.trust_forwarded:
            hops = headers.getlist("X-Forwarded-For") if hasattr(headers, "getlist") else None
            forwarded = ",".join(hops) if hops else headers.get("X-Forwarded-For")
        return self.ip_identity(remote_addr, forwarded)

    def ip_identity(self, remote_addr: str | None, forwarded: str | None) -> str:
        """``ip:<address>`` (``ip:<prefix>/64`` for IPv6) of the client; ``forwarded`` is believed
        only from ``TRUSTED_PROXIES`` (see ``client_address``)."""
        known = self._identities.get((remote_addr, forwarded))
        if known is not None:
            return known
        addr = client_address(remote_addr, forwarded, self.trusted_proxies)
        if len(self._identities) >= _IDENTITIES_MAX:
            self._identities.clear()
        known = self._identities[(remote_addr, forwarded)] = "ip:" + address_bucket(addr)
        return known

    async def _check(self, route_class: str, identity: str) -> None:
        decision = await self.hit(route_class, identity)
        if decision is not None:
            self._decide(g, decision, route_class)

    async def guard_auth_failures(self, identity: str) -> None:
        """Brute-force guard (``auth_failures`` class, per client IP): count a failed key look-up
        and raise 429 once the client used up its failures. Called after the look-up, so it never
        refuses a valid key."""
        if not self.enabled:
            return
        decision = await self.hit("auth_failures", identity)
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
        self._decide(ctx_g, decision, cls)
        return None

    async def _check_request(self, ctx_g: Any, cls: str, identity: str) -> None:
        decision = await self.hit(cls, identity)
        if decision is not None:
            self._decide(ctx_g, decision, cls)

    def _decide(self, ctx_g: Any, decision: Decision, cls: str) -> None:
        """Admit the request, or raise its 429 (``RateLimited``, answered by the error handlers
        as every error is: UDF's own shape under ``/udf``). ``X-RateLimit-*`` are added after it,
        as on every answer, from ``g.rate_limit``."""
        ctx_g.rate_limit = decision
        if not decision.allowed:
            raise self.refusal(decision, cls)

    def refusal(self, decision: Decision, cls: str) -> RateLimited:
        """The error of a refused request (counted), its message naming the window."""
        rejections = self._rejections.get(cls)
        if rejections is None:
            rejections = self._rejections[cls] = RATE_LIMIT_REJECTIONS.labels(cls)
        rejections.inc()
        limit = self.limit_for(cls)
        return RateLimited.exceeded(decision.limit, limit.seconds if limit is not None else 0.0, cls,
                                    retry_after=max(decision.retry_after, 0.001))

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
