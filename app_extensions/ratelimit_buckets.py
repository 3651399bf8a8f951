"""The rate limiter's buckets: limits, the store's GCRA in memory (``services.upstream.store``; its
Redis GCRA is leased from), and the local leases that let most requests be decided without a Redis
round trip.

A lease is a handful of tokens taken at once from the client's bucket in Redis, spent locally, and
thrown away unspent after ``LEASE_SECONDS``. Tokens leave Redis before they are spent, so the
instances together never spend more than Redis granted; a token is spent at most ``LEASE_SECONDS``
after Redis granted it. A refusal is kept locally until the moment Redis said the next token frees
up (no instance can get one earlier), so a refused client costs no Redis round trip either.
``docs/performance.md`` states the exact guarantee across N instances.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from config import ConfigError
from services.upstream.store import LOCAL_MAX_KEYS, MemoryStore

_UNITS = {"s": 1, "second": 1, "m": 60, "minute": 60, "h": 3600, "hour": 3600}
#: Leased tokens not spent within this many seconds are dropped.
LEASE_SECONDS = 1.0
#: A lease holds at most this many tokens, and at most a tenth of the limit (small limits are
#: therefore enforced one request at a time, exactly).
MAX_LEASE = 100

@dataclass(frozen=True)
class Limit:
    """``requests`` per ``seconds``; a burst of up to ``requests`` is allowed."""

    requests: int
    seconds: float

    @property
    def emission_ms(self) -> float:
        return self.seconds * 1000 / self.requests

    @property
    def max_lease(self) -> int:
        return max(1, min(MAX_LEASE, self.requests // 10))

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


class Decision(NamedTuple):  # a tuple: built on every limited request, cheaply
    allowed: bool
    limit: int
    remaining: int
    retry_after: float


class LocalGcra:
    """The limiter's buckets in process memory, used while Redis is down: the store's memory GCRA
    (``services.upstream.store.MemoryStore``; bounded number of keys), one token at a time."""

    def __init__(self, memory: MemoryStore | None = None) -> None:
        self.memory = memory if memory is not None else MemoryStore()

    def take(self, key: str, limit: Limit, now_ms: float | None = None, peek: bool = False) -> Decision:
        now = self.memory.clock() * 1000 if now_ms is None else now_ms
        got = self.memory.gcra_at(("rl", key), now, limit.emission_ms, limit.requests, 1,
                                  partial=True, peek=peek)
        return Decision(got.granted > 0, limit.requests, got.remaining, got.ms / 1000)


@dataclass(slots=True)
class TokenLease:
    """Tokens taken at once from one client's Redis bucket, spent here until ``expires``."""

    tokens: int = 0
    expires: float = 0.0
    #: Redis's remaining count right after this lease was taken.
    remaining: int = 0
    leased_at: float = 0.0
    size: int = 0
    pending: asyncio.Future[None] | None = None


#: take(key, limit, wanted) -> (granted, remaining, retry_after seconds); raises when Redis fails.
TakeFn = Callable[[str, Limit, int], Awaitable[tuple[int, int, float]]]


class LeasedBuckets:
    """Per-client leases of tokens from the Redis buckets, and the refusals known locally."""

    def __init__(self, take: TakeFn, lease_seconds: float = LEASE_SECONDS) -> None:
        self._take = take
        self.lease_seconds = lease_seconds
        self._leases: OrderedDict[str, TokenLease] = OrderedDict()
        #: key -> monotonic time before which the key is refused (Redis said so).
        self.refused: dict[str, float] = {}

    def clear(self) -> None:
        self._leases.clear()
        self.refused.clear()

    def refused_for(self, key: str, now: float) -> float | None:
        """Seconds ``key`` stays refused, or None."""
        until = self.refused.get(key)
        if until is None:
            return None
        if until <= now:
            del self.refused[key]
            return None
        return until - now

    def spend(self, key: str, limit: Limit) -> Decision | None:
        """Decide from what is known locally: refused, or one token of ``key``'s lease spent; None
        when a lease must first be taken from Redis (``hit`` does that)."""
        now = time.monotonic()
        wait = self.refused_for(key, now)
        if wait is not None:
            return Decision(False, limit.requests, 0, wait)
        lease = self._leases.get(key)
        if lease is None:
            return None
        self._leases.move_to_end(key)
        if lease.tokens > 0 and lease.expires > now:
            lease.tokens -= 1
            return Decision(True, limit.requests, lease.remaining + lease.tokens, 0.0)
        return None

    async def hit(self, key: str, limit: Limit) -> Decision:
        """Spend one token of ``key`` (leasing more from Redis when none is left)."""
        while True:
            decision = self.spend(key, limit)
            if decision is not None:
                return decision
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = TokenLease()
                while len(self._leases) > LOCAL_MAX_KEYS:
                    self._leases.popitem(last=False)
            if lease.pending is not None:  # another request of this client is leasing: share it
                await asyncio.shield(lease.pending)
                continue
            await self._renew(key, limit, lease, time.monotonic())

    async def _renew(self, key: str, limit: Limit, lease: TokenLease, now: float) -> None:
        # Size the lease for what this client spent per second since the last one, so that it
        # lasts about half the lease time: a slow client leases one token at a time.
        elapsed = now - lease.leased_at
        rate = (lease.size - lease.tokens) / elapsed if lease.size and elapsed > 0 else 0.0
        wanted = max(1, min(limit.max_lease, int(rate * self.lease_seconds / 2)))
        lease.pending = asyncio.get_running_loop().create_future()
        try:
            granted, remaining, retry_after = await self._take(key, limit, wanted)
        finally:
            pending, lease.pending = lease.pending, None
            pending.set_result(None)
        now = time.monotonic()
        if granted < 1:
            if len(self.refused) >= LOCAL_MAX_KEYS:  # bounded: forget the ended refusals first
                self.refused = {k: t for k, t in self.refused.items() if t > now}
                while len(self.refused) >= LOCAL_MAX_KEYS:
                    del self.refused[next(iter(self.refused))]
            self.refused[key] = now + retry_after
            lease.tokens = lease.size = 0
            return
        lease.tokens, lease.size, lease.remaining = granted, granted, remaining
        lease.leased_at, lease.expires = now, now + self.lease_seconds
