"""Caches for bars: the ``Cache`` contract and its Redis implementation.

Two kinds of entry, both namespaced by the configured prefix:
- 1m bars of a series in a sorted set scored by ts (``get_1m_bars`` / ``store_1m_bars``), closed
  bars only;
- resampled answers keyed by (series, timeframe, range, limit), stored with a TTL that is long for
  closed ranges and short when the range holds the forming bar.

Redis holds recent data only (``CACHE_RECENT_SECONDS``, default 7 days, as backfills cache): 1m
bars older than that are not written (and are trimmed from a series' set on each write), and an
answer whose range ended before it is not cached (it expires when its range leaves the window).
Old history is served from the database (and the in-process answer bytes), so whatever old ranges
clients ask for, Redis does not grow with them; reads never extend an entry's expiry.
"""

from __future__ import annotations

import json
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from core.errors import DataSourceError
from core.metrics import CACHE_REQUESTS
from core.ports import RedisClient
from core.timeframes import Bar, now_ms
from core.types import Series

log = logging.getLogger(__name__)
#: Namespace of answer entries; bump it when their format changes.
ANSWER_NS = "ans2"
RECENT_DEFAULT_MS = 7 * 86_400_000


def answer_range(key: str) -> tuple[int, int] | None:
    """``(start, end)`` of an answer key, which ends with ``:<timeframe>:<start>:<end>`` (the
    orchestrator's answer keys); None for another key."""
    try:
        start, end = (int(x) for x in key.rsplit(":", 2)[1:])
    except ValueError:
        return None
    return start, end


class Cache(ABC):
    """Bar cache. Implementations raise ``DataSourceError`` when the backend fails."""

    @abstractmethod
    async def get_1m_bars(self, series: Series, start_ms: int, end_ms: int) -> list[Bar]:
        """Cached closed 1m bars with start_ms <= ts < end_ms, ascending (may have holes)."""

    @abstractmethod
    async def store_1m_bars(self, series: Series, bars: Sequence[Sequence[float]]) -> None:
        """Cache closed 1m bars (a contiguous fetch result: replaces its ts span)."""

    @abstractmethod
    async def get_resampled(self, key: str) -> dict[str, Any] | None:
        """A cached answer ``{"partial": bool, "bars_json": str}``, or None."""

    @abstractmethod
    async def set_resampled(self, key: str, answer: dict[str, Any], ttl: int) -> None:
        """Cache an answer (``partial`` and the bars already encoded as ``bars_json``) for ``ttl`` s."""

    @abstractmethod
    async def drop_answers(self, series: Series, ts: Sequence[int]) -> int:
        """Forget every cached answer of ``series`` whose range holds one of the 1m bars ``ts``
        (they were revised); returns how many were dropped."""


class RedisCache(Cache):
    """The cache in Redis, holding the last ``recent_ms`` only (see the module docstring)."""

    def __init__(self, redis: RedisClient, ttl_1m: int, recent_ms: int = RECENT_DEFAULT_MS) -> None:
        self.redis = redis
        self.ttl_1m = ttl_1m
        self.recent_ms = recent_ms

    def recent_from(self) -> int:
        """The oldest ts (ms) Redis keeps."""
        return now_ms() - self.recent_ms

    async def get_1m_bars(self, series: Series, start_ms: int, end_ms: int) -> list[Bar]:
        key = self.redis.key("1m", series.key())
        try:
            raw = await self.redis.run(
                lambda r: r.zrangebyscore(key, start_ms, f"({end_ms}")
            )
        except DataSourceError:
            CACHE_REQUESTS.labels("1m", "error").inc()
            raise
        CACHE_REQUESTS.labels("1m", "hit" if raw else "miss").inc()
        return [json.loads(m) for m in raw]  # type: ignore[arg-type]

    async def store_1m_bars(self, series: Series, bars: Sequence[Sequence[float]]) -> None:
        oldest = self.recent_from()
        bars = [b for b in bars if b[0] >= oldest]  # old history stays in the database
        if not bars:
            return
        key = self.redis.key("1m", series.key())
        members = {json.dumps([int(b[0]), *map(float, b[1:6])]): int(b[0]) for b in bars}
        lo, hi = int(bars[0][0]), int(bars[-1][0])

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", f"({oldest}")  # minutes that left the window
                pipe.zremrangebyscore(key, lo, hi)
                pipe.zadd(key, members)
                pipe.expire(key, self.ttl_1m)
                await pipe.execute()

        await self.redis.run(write)

    async def get_resampled(self, key: str) -> dict[str, Any] | None:
        full = self.redis.key(ANSWER_NS, key)
        try:
            raw = await self.redis.run(lambda r: r.get(full))
        except DataSourceError:
            CACHE_REQUESTS.labels("answer", "error").inc()
            raise
        CACHE_REQUESTS.labels("answer", "hit" if raw else "miss").inc()
        if not raw:
            return None
        # Stored as "<0|1>" + bars JSON: the hot path passes the JSON through without decoding it.
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if text[:1] not in ("0", "1"):
            return None  # not an entry of this format: a miss
        return {"partial": text[0] == "1", "bars_json": text[1:]}

    async def set_resampled(self, key: str, answer: dict[str, Any], ttl: int) -> None:
        span = answer_range(key)
        if span is not None:  # kept only while its range holds recent minutes
            ttl = min(ttl, math.ceil((span[1] - self.recent_from()) / 1000))
        if ttl <= 0:
            return
        full = self.redis.key(ANSWER_NS, key)
        payload = ("1" if answer["partial"] else "0") + answer["bars_json"]
        await self.redis.run(lambda r: r.set(full, payload, ex=ttl))

    async def drop_answers(self, series: Series, ts: Sequence[int]) -> int:
        # Answer keys end with ":<timeframe>:<start>:<end>" (see DataOrchestrator); a range
        # [start, end) of bucket boundaries holds a 1m bar when start <= ts < end.
        pattern = self.redis.key(ANSWER_NS, re.sub(r"([*?\[\]\\])", r"\\\1", series.key())) + ":*"
        wanted = sorted(set(ts))

        async def drop(r: Any) -> int:
            doomed = []
            async for raw in r.scan_iter(match=pattern, count=500):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                span = answer_range(key)
                if span is None:
                    continue
                start, end = span
                if any(start <= t < end for t in wanted):
                    doomed.append(key)
            return int(await r.delete(*doomed)) if doomed else 0

        return await self.redis.run(drop)


class BestEffortCache:
    """The answer and 1m-bar cache as the bars path uses it: a cache that is absent (None) or
    failing reads as a miss and skips writes (each failure logged), so Redis is never needed to
    answer."""

    def __init__(self, cache: Cache | None) -> None:
        self.cache = cache

    async def get_answer(self, key: str) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        try:
            return await self.cache.get_resampled(key)
        except DataSourceError as exc:
            log.debug("cache read skipped: %s", exc.details)  # the outage: RedisClient logs it once
            return None

    async def put_window(self, series: Series, runs: Sequence[Sequence[Sequence[float]]], key: str,
                         answer: dict[str, Any] | None, ttl: int) -> None:
        """What one answer build keeps: each run of fetched closed 1m bars (a run replaces its own
        span), then the answer under ``key`` for ``ttl`` seconds (None: not kept)."""
        for run in runs:
            await self.put_1m(series, run)
        if self.cache is None or answer is None:
            return
        try:
            await self.cache.set_resampled(key, answer, ttl)
        except DataSourceError as exc:
            log.debug("cache write skipped: %s", exc.details)

    async def get_1m(self, series: Series, start: int, end: int) -> list[Bar]:
        if self.cache is None:
            return []
        try:
            return await self.cache.get_1m_bars(series, start, end)
        except DataSourceError as exc:
            log.debug("1m cache read skipped: %s", exc.details)
            return []

    async def put_1m(self, series: Series, bars: Sequence[Sequence[float]]) -> None:
        if self.cache is None or not bars:
            return
        try:
            await self.cache.store_1m_bars(series, bars)
        except DataSourceError as exc:
            log.debug("1m cache write skipped: %s", exc.details)
