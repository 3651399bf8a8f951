"""Refusals answered before Quart: an ASGI wrapper around the app.

While Redis's refusal of a client is known locally (``LeasedBuckets.refused``), the client's
requests are answered 429 here, with no request context and no hooks: the same body, headers
(``Retry-After``, ``X-RateLimit-Limit``, ``X-RateLimit-Remaining: 0``, ``X-Request-ID``) and metrics
as Quart's answer. When the refusal has run out, or a lease of the client is being taken from
Redis, the request is decided here as the limiter's hook would decide it (``RateLimiter.hit``:
a token of the lease, else a lease from Redis): refused, it is answered here; admitted, it goes on
to Quart with its decision in the scope (``DECIDED``), which the hook then uses instead of
spending another token. So a client far over its limit costs Quart one admitted request per
token that frees up, not every request that came in while Redis was asked.

Requests with an ``Origin`` header (CORS answers are Quart's), ``OPTIONS`` and ``HEAD``, and paths
not refused through Quart yet (their route template, for the metrics, is learned there) always go
on to Quart. The bodies and the fixed headers of a limit's refusal are encoded once.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, NamedTuple, Protocol

from quart import Request

from app_extensions.auth import hash_key
from app_extensions.hooks import Header
from app_extensions.ratelimit_buckets import Decision, LeasedBuckets, Limit
from app_extensions.request_context import http_metric_children, new_request_id, request_id_from
from core.errors import RateLimited
from core.metrics import RATE_LIMIT_REJECTIONS

#: Paths whose route template is known, for the metrics of refusals answered before Quart.
ROUTES_MAX = 1000
#: Scope key of a decision taken here for a request handed on to Quart.
DECIDED = "ratelimit.decision"
#: ``Retry-After`` values, encoded once (whole seconds, at least 1).
_RETRY_AFTER = [str(max(1, n)).encode() for n in range(62)]


class Limiter(Protocol):
    """What the wrapper reads of the ``RateLimiter`` (``ratelimit.py``)."""

    enabled: bool
    auth_enabled: bool
    trust_forwarded: bool
    buckets: LeasedBuckets

    def limit_for(self, route_class: str) -> Limit | None: ...

    async def hit(self, route_class: str, identity: str, peek: bool = False) -> Decision | None: ...

    def ip_identity(self, remote_addr: str | None, forwarded: str | None) -> str: ...


class EarlyRefusals:
    """The ASGI wrapper's state: learned route templates, encoded refusals, metric children."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        #: path -> route template, learned from refusals answered by Quart.
        self.routes: dict[str, str] = {}
        #: limit (requests) -> (body, the headers before Retry-After, the headers after it)
        self._encoded: dict[int, tuple[bytes, list[Header], list[Header]]] = {}
        self._rejections: dict[str, Any] = {}
        #: (method, route) -> the 429 counter and the latency histogram children
        self._http: dict[tuple[str, str], tuple[Any, Any]] = {}

    def learn(self, req: Request) -> None:
        """Called when Quart refuses ``req``: its path may be answered here from now on."""
        rule = req.url_rule
        if rule is not None and len(self.routes) < ROUTES_MAX:
            self.routes[req.path] = rule.rule

    def wrap(self, inner: Any) -> Any:
        """The ASGI app answering known refusals, else handing the request to ``inner``."""
        limiter = self.limiter

        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and limiter.enabled and limiter.buckets.busy:
                started = time.perf_counter()
                found = self.refusal(scope)
                if found is not None:
                    if isinstance(found, _Undecided):
                        decision = await limiter.hit(found.cls, found.identity)
                        if decision is None or decision.allowed:
                            if decision is not None:
                                scope[DECIDED] = decision
                            await inner(scope, receive, send)
                            return
                        found = _Refused(found.cls, found.route, found.limit, decision.retry_after,
                                         found.request_id)
                    status, headers, body = self._answer(scope, found, started)
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
            await inner(scope, receive, send)

        return asgi

    def answer(self, method: str, path: str, headers: list[Header], client: Any
               ) -> tuple[int, list[Header], bytes] | None:
        """The 429 of a request whose client is known to be refused, for the server to send
        before any ASGI stream exists (``hooks.EARLY_ANSWER``); None to go on as usual."""
        limiter = self.limiter
        if not (limiter.enabled and limiter.buckets.refused):  # only known refusals are answered
            return None
        started = time.perf_counter()
        scope = {"method": method, "path": path, "headers": headers, "client": client}
        found = self.refusal(scope)
        if not isinstance(found, _Refused):
            return None  # to be decided (Redis may be asked): the ASGI wrapper does that
        return self._answer(scope, found, started)

    def refusal(self, scope: dict[str, Any]) -> _Refused | _Undecided | None:
        """Whether the request's client is refused (known locally), or to be decided here (its
        refusal ran out, or its lease is being renewed); None when Quart is to answer."""
        path, method = scope["path"], scope["method"]
        route = self.routes.get(path)
        if route is None or method in ("OPTIONS", "HEAD"):
            return None
        headers = dict(scope["headers"])  # Hypercorn gives lower-case names
        if b"origin" in headers:
            return None  # CORS answers are Quart's (the refusal is known: no Redis call there)
        limiter = self.limiter
        if limiter.auth_enabled:
            key = headers.get(b"x-api-key")
            if not key:
                return None  # a 401 is auth's answer
            identity = "key:" + hash_key(key.decode("latin-1"))[:16]
        else:
            forwarded = headers.get(b"x-forwarded-for") if limiter.trust_forwarded else None
            client = scope.get("client")  # as Quart's request.remote_addr reads it
            identity = limiter.ip_identity(client[0] if client else "<local>",
                                           forwarded.decode("latin-1") if forwarded else None)
        cls = route_class(path)
        limit = limiter.limit_for(cls)
        if limit is None:
            return None
        bucket = f"{cls}:{identity}"
        buckets = limiter.buckets
        until = buckets.refused.get(bucket)
        if until is None:
            if buckets.renewing(bucket) is None:
                return None
            return _Undecided(cls, route, limit, identity, headers.get(b"x-request-id"))
        wait = buckets.refused_for(bucket, time.monotonic())
        if wait is None:  # the refusal ran out: this request asks for the next token
            return _Undecided(cls, route, limit, identity, headers.get(b"x-request-id"))
        return _Refused(cls, route, limit, wait, headers.get(b"x-request-id"))

    def _answer(self, scope: dict[str, Any], refused: _Refused, started: float
                ) -> tuple[int, list[Header], bytes]:
        """The 429 for a refused request, counted as Quart's would be."""
        rejections = self._rejections.get(refused.cls)
        if rejections is None:
            rejections = self._rejections[refused.cls] = RATE_LIMIT_REJECTIONS.labels(refused.cls)
        rejections.inc()
        body, head, tail = self._encode(refused.limit.requests)
        sent = refused.request_id
        rid = request_id_from(sent.decode("latin-1")) if sent else new_request_id()
        children = self._http.get((scope["method"], refused.route))
        if children is None:
            children = self._http[(scope["method"], refused.route)] = http_metric_children(
                scope["method"], refused.route, 429)
        children[0].inc()
        children[1].observe(time.perf_counter() - started)
        seconds = math.ceil(max(refused.wait, 0.001))
        retry = _RETRY_AFTER[seconds] if seconds < len(_RETRY_AFTER) else str(seconds).encode()
        return 429, [*head, (b"retry-after", retry), *tail, (b"x-request-id", rid.encode())], body

    def _encode(self, requests: int) -> tuple[bytes, list[Header], list[Header]]:
        encoded = self._encoded.get(requests)
        if encoded is None:
            exc = RateLimited(f"rate limit of {requests} requests exceeded; retry later")
            body = json.dumps(exc.to_dict(), separators=(",", ":")).encode() + b"\n"  # as Quart writes it
            encoded = self._encoded[requests] = (
                body,
                [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                [(b"x-ratelimit-limit", str(requests).encode()), (b"x-ratelimit-remaining", b"0")],
            )
        return encoded


class _Refused(NamedTuple):
    cls: str
    route: str
    limit: Limit
    wait: float
    request_id: bytes | None  # as the client sent it


class _Undecided(NamedTuple):
    cls: str
    route: str
    limit: Limit
    identity: str
    request_id: bytes | None


def route_class(path: str) -> str:
    """The limit class of a request path (fixed names; never the path itself)."""
    if path == "/api/v1/ohlcv":
        return "ohlcv"
    if path == "/api/v1/export":
        return "export"
    if path.startswith(("/api/v1/backfill", "/api/v1/gaps")):
        return "backfill"
    return "default"
