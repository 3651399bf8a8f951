"""Cache warming: what dashboards asked for recently is prefetched when an instance starts.

Two things are remembered in Redis by every instance, cheaply:

- the **live channels** (``{prefix}:warm:channels``, a sorted set scored by the last time an
  instance had subscribers on it), sampled every ``WARMUP_RECORD_SECONDS``;
- the **requested ranges** of ``/ohlcv`` (market, provider, symbol, timeframe, start, end, limit),
  counted in memory per request and added every ``WARMUP_RECORD_SECONDS`` to an hourly sorted set
  (``{prefix}:warm:ranges:{hour}``, expiring after the look-back).

At start, ``Warmer.run`` answers, through the orchestrator, the snapshot (the latest
``WARMUP_SNAPSHOT_BARS`` bars) of each channel live within ``WARMUP_LOOKBACK_SECONDS``, newest
first, then the ``WARMUP_TOP_RANGES`` most requested ranges of that look-back, one query at a time.
This fills the answer and 1m caches and storage, opens plugin instances (CCXT's market list) and
the sim market's memos, so the first dashboards are answered from cache. It stops at whichever
budget ends first: ``WARMUP_MAX_SECONDS`` of wall time or ``WARMUP_MAX_CALLS`` upstream calls
(``provider_calls_total`` of this process since warming began, other requests' calls included,
so it never adds to a burst; checked before each query, which itself makes at most
``OHLCV_MAX_PROVIDER_CALLS``). A failing query is logged and counted, and the next one is tried.
Users' own answers (their credentials) are never recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core.errors import AppError, DataSourceError
from core.metrics import PROVIDER_CALLS, WARMUP_QUERIES
from core.types import Series
from services.bars.orchestrator import DataOrchestrator
from services.bars.query import BarQuery
from services.settings import build, setting
from services.upstream.breaker import RedisRunner

log = logging.getLogger(__name__)
HOUR_S = 3600


@dataclass(frozen=True)
class WarmupSettings:
    """``WARMUP_*`` settings (``build(WarmupSettings, config)``)."""

    enabled: bool = setting("WARMUP_ENABLED")
    max_seconds: float = setting("WARMUP_MAX_SECONDS")
    max_calls: int = setting("WARMUP_MAX_CALLS")
    top_ranges: int = setting("WARMUP_TOP_RANGES")
    snapshot_bars: int = setting("WARMUP_SNAPSHOT_BARS")
    lookback_seconds: float = setting("WARMUP_LOOKBACK_SECONDS")
    record_seconds: float = setting("WARMUP_RECORD_SECONDS")


@dataclass
class WarmupReport:
    """What one warm-up did: queries answered and failed, upstream calls, why it stopped."""

    queries: int = 0
    failed: int = 0
    calls: int = 0
    stopped: str = "done"  # done, time, calls, cancelled
    seconds: float = 0.0
    warmed: list[str] = field(default_factory=list)
    #: Providers a query failed for: the first failure of each is a warning, the rest DEBUG (a
    #: live channel's snapshot and a recorded range of the same series said it twice).
    failed_providers: set[str] = field(default_factory=set)


def provider_calls_made() -> int:
    """Upstream calls of this process so far (all providers, methods and outcomes)."""
    return int(sum(s.value for m in PROVIDER_CALLS.collect() for s in m.samples
                   if s.name.endswith("_total")))


def range_key(q: BarQuery) -> str:
    s = q.series
    return json.dumps([s.market, s.provider, s.symbol, q.timeframe, q.start, q.end, q.limit])


def query_of(key: str) -> BarQuery:
    """The query a recorded range key stands for (``ValueError`` when it is not one)."""
    market, provider, symbol, timeframe, start, end, limit = json.loads(key)
    return BarQuery(Series(str(market), str(provider), str(symbol)), str(timeframe),
                    None if start is None else int(start), None if end is None else int(end),
                    int(limit))


class Warmer:
    """The cache warmer: it records which ``/ohlcv`` ranges are asked and which channels are live,
    and ``run`` asks them again after a restart, within the budgets, so an instance's first
    dashboards are answered from a warm cache. The ``Warmup`` extension runs its tasks."""

    def __init__(self, orchestrator: DataOrchestrator, redis: RedisRunner | None,
                 settings: WarmupSettings, live_channels: Callable[[], Iterable[str]]) -> None:
        self.orchestrator = orchestrator
        self.redis = redis
        self.settings = settings
        #: Names of the channels this instance has subscribers on (``market:provider:symbol:tf``).
        self.live_channels = live_channels
        self._counts: Counter[str] = Counter()
        self.report: WarmupReport | None = None

    def note(self, q: BarQuery) -> None:
        """Count one ``/ohlcv`` query of the shared path (memory only; ``record`` flushes)."""
        self._counts[range_key(q)] += 1

    def note_key(self, key: str) -> None:
        """``note`` for a query whose ``range_key`` is known (a prepared answer keeps it)."""
        self._counts[key] += 1

    async def record(self) -> bool:
        """Flush the counted ranges and the live channels to Redis; False when Redis is down
        (the counts are kept for the next flush; the outage itself is logged by Redis' owner)."""
        if self.redis is None:
            return True
        counts, self._counts = self._counts, Counter()
        channels = sorted(set(self.live_channels()))
        now = time.time()
        ttl = int(self.settings.lookback_seconds) + HOUR_S
        ranges_key = self.redis.key("warm", "ranges", int(now // HOUR_S))
        channels_key = self.redis.key("warm", "channels")

        async def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for key, n in counts.items():
                pipe.zincrby(ranges_key, n, key)
            pipe.expire(ranges_key, ttl)
            if channels:
                pipe.zadd(channels_key, dict.fromkeys(channels, now))
            pipe.zremrangebyscore(channels_key, "-inf", now - self.settings.lookback_seconds)
            await pipe.execute()

        try:
            await self.redis.run(write)
        except DataSourceError as exc:
            self._counts.update(counts)  # kept for the next flush
            log.debug("warm-up records not written: %s", exc.details)
            return False
        return True

    async def plan(self) -> list[BarQuery]:
        """The queries to warm: recent live channels' snapshots, then the most asked ranges."""
        if self.redis is None:
            return []
        now, lookback = time.time(), self.settings.lookback_seconds
        hours = [int(now // HOUR_S) - i for i in range(int(lookback // HOUR_S) + 1)]
        keys = [self.redis.key("warm", "ranges", h) for h in hours]
        channels_key = self.redis.key("warm", "channels")
        top = self.settings.top_ranges

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.zrevrangebyscore(channels_key, "+inf", now - lookback)
            for key in keys:
                pipe.zrevrange(key, 0, 4 * top - 1, withscores=True)
            return list(await pipe.execute())

        found = await self.redis.run(read)
        out: dict[str, BarQuery] = {}
        for raw in found[0]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            market, provider, rest = name.split(":", 2)
            symbol, _, timeframe = rest.rpartition(":")
            q = BarQuery(Series(market, provider, symbol), timeframe, None, None,
                         self.settings.snapshot_bars)
            out.setdefault(range_key(q), q)
        totals: Counter[str] = Counter()
        for rows in found[1:]:
            for member, score in rows:
                totals[member.decode() if isinstance(member, bytes) else str(member)] += int(score)
        for key, _ in totals.most_common(top):
            try:
                out.setdefault(key, query_of(key))
            except (ValueError, TypeError) as exc:
                log.warning("ignoring a recorded range that is not one: %s", exc)
        return list(out.values())

    async def run(self) -> WarmupReport:
        """Prefetch ``plan()`` within the time and call budgets; returns (and keeps) the report."""
        report = self.report = WarmupReport()
        started, calls0 = time.monotonic(), provider_calls_made()
        try:
            async with asyncio.timeout(self.settings.max_seconds):
                for q in await self.plan():
                    if provider_calls_made() - calls0 >= self.settings.max_calls:
                        report.stopped = "calls"
                        break
                    await self._one(q, report)
        except TimeoutError:
            report.stopped = "time"
        except DataSourceError as exc:
            log.warning("warm-up skipped, nothing recorded can be read: %s", exc.details)
        except asyncio.CancelledError:
            report.stopped = "cancelled"
            raise
        finally:
            report.calls = provider_calls_made() - calls0
            report.seconds = round(time.monotonic() - started, 3)
            log.info("warm-up: %d queries (%d failed), %d upstream calls, %.1f s, stopped: %s",
                     report.queries, report.failed, report.calls, report.seconds, report.stopped)
        return report

    async def _one(self, q: BarQuery, report: WarmupReport) -> None:
        name = f"{q.series.key()}:{q.timeframe}"
        try:
            await self.orchestrator.get_bars(q)
        except AppError as exc:  # one bad range (a provider down, a symbol gone) does not stop it
            report.failed += 1
            WARMUP_QUERIES.labels("failed").inc()
            provider = q.series.provider
            if provider in report.failed_providers:
                log.debug("warm-up of %s failed: %s", name, exc.message)
            else:
                report.failed_providers.add(provider)
                log.warning("warm-up of %s failed: %s (further failures of %s in this warm-up: "
                            "DEBUG; the count is in the summary)", name, exc.message, provider)
            return
        report.queries += 1
        report.warmed.append(name)
        WARMUP_QUERIES.labels("ok").inc()


def warmup_settings(config: dict[str, Any]) -> WarmupSettings:
    """Built and validated once; ``ValueError`` names the wrong setting."""
    settings = build(WarmupSettings, config)
    for name, value in (("WARMUP_MAX_SECONDS", settings.max_seconds),
                        ("WARMUP_RECORD_SECONDS", settings.record_seconds),
                        ("WARMUP_LOOKBACK_SECONDS", settings.lookback_seconds)):
        if not value > 0:
            raise ValueError(f"{name} must be positive")
    if settings.max_calls < 0 or settings.top_ranges < 0 or not 1 <= settings.snapshot_bars <= 1000:
        raise ValueError("WARMUP_MAX_CALLS and WARMUP_TOP_RANGES must not be negative, "
                         "WARMUP_SNAPSHOT_BARS within 1..1000")
    return settings
