"""DataOrchestrator: answers OHLCV queries from cache, then storage, then the provider.

The flow for a query of timeframe T over the buckets [a, b):
1. the answer cache (closed ranges cached long, ranges with the forming bar briefly);
2. storage: the gap ledger says which closed 1m ranges were never fetched; only those (and the
   last few minutes, which are never marked complete) are fetched from the provider, written to
   PostgreSQL in one transaction, and the answer is read back aggregated to T;
3. storage down: 1m bars from the cache when they cover the range, else from the provider, and
   resampled here. A range too large for ``OHLCV_MAX_PROVIDER_CALLS`` is fetched in T directly
   when the provider serves T natively, and the 1m history is left to a backfill job.
The forming bar is never cached as closed and never written to storage.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import DataSourceError, NetworkPluginError
from core.timeframes import MINUTE_MS, Bar, bucket_ceil, bucket_start, now_ms, resample, tf_ms
from core.types import Series, merge_ranges
from services.sources import AggregateSource, CacheSource, DbSource, PluginSource

log = logging.getLogger(__name__)
#: Minutes this close to now are refetched every time, never recorded complete in the ledger.
LEDGER_SAFETY_MS = 2 * MINUTE_MS

#: How far back (in multiples of ``limit`` buckets) a latest-bars query looks in markets that close.
WIDEN_FACTORS = (1, 2, 4, 8)
#: ... plus this much clock time: a long weekend (Friday close to Tuesday open).
CLOSURE_SLACK_MS = 4 * 24 * 60 * MINUTE_MS

MissingHook = Callable[[Series, list[tuple[int, int]]], Awaitable[str | None]]


@dataclass(frozen=True)
class BarQuery:
    series: Series
    timeframe: str
    start: int | None
    end: int | None
    limit: int


@dataclass
class BarAnswer:
    #: The bars; may be None when the answer came from the cache as JSON (see ``bars``).
    raw_bars: list[Bar] | None
    partial: bool
    next: int | None
    sources: list[str] = field(default_factory=list)
    #: True when every bucket of the range has closed (the answer can carry an ETag).
    closed: bool = False
    #: True when some of the range could not be fetched (budget or outage); see ``backfill_job``.
    incomplete: bool = False
    backfill_job: str | None = None
    raw_json: str | None = None

    @property
    def bars(self) -> list[Bar]:
        if self.raw_bars is None:
            self.raw_bars = json.loads(self.raw_json or "[]")
        return self.raw_bars

    @bars.setter
    def bars(self, value: list[Bar]) -> None:
        self.raw_bars, self.raw_json = value, None

    def bars_json(self) -> str:
        """The bars as compact JSON (cached answers are passed through without re-encoding)."""
        if self.raw_json is None:
            self.raw_json = json.dumps(self.bars, separators=(",", ":"))
        return self.raw_json


def window(q: BarQuery, now: int) -> tuple[int, int, int | None]:
    """The buckets [a, b) a query covers, and the ``next`` page start (None when done)."""
    size = tf_ms(q.timeframe)
    if q.start is None:  # the latest bars up to ``end``: an ``end`` past now means up to now
        b = bucket_ceil(min(q.end, now + 1) if q.end is not None else now + 1, q.timeframe)
        return b - q.limit * size, b, None
    a = bucket_ceil(q.start, q.timeframe)
    req_end = bucket_ceil(q.end if q.end is not None else now + 1, q.timeframe)
    b = min(req_end, a + q.limit * size)
    return a, max(a, b), (b if b < req_end else None)


def add_forming(bars: list[Bar], forming: list[Bar], timeframe: str) -> list[Bar]:
    """Fold the forming 1m bar(s) into the last bucket (or start a new one)."""
    for f in forming:
        start = bucket_start(int(f[0]), timeframe)
        if bars and bars[-1][0] == start:
            last = bars[-1]
            bars[-1] = [start, last[1], max(last[2], f[2]), min(last[3], f[3]), f[4], last[5] + f[5]]
        elif not bars or bars[-1][0] < start:
            bars.append([start, *map(float, f[1:6])])
    return bars


class DataOrchestrator:
    def __init__(
        self,
        cache: CacheSource,
        aggregates: AggregateSource | None,
        db: DbSource | None,
        plugins: PluginSource,
        config: dict[str, Any],
        on_missing: MissingHook | None = None,
    ) -> None:
        self.cache, self.aggregates, self.db, self.plugins = cache, aggregates, db, plugins
        self.ttl_closed = int(config.get("CACHE_TTL_CLOSED", 86_400))
        self.ttl_forming = int(config.get("CACHE_TTL_FORMING", 5))
        self.budget = int(config.get("OHLCV_MAX_PROVIDER_CALLS", 10))
        #: Called with ranges left unfetched; returns a backfill job id (set by BackfillManager).
        self.on_missing = on_missing
        #: Answers being built, by cache key: concurrent identical queries share one build
        #: (one upstream fetch) instead of stampeding the provider.
        self._inflight: dict[str, asyncio.Task[BarAnswer]] = {}

    async def get_bars(self, q: BarQuery) -> BarAnswer:
        """Bars for ``q``: strictly ascending, no duplicates, the forming bar flagged ``partial``.

        Without ``start``, the latest ``limit`` bars. For markets that do not trade around the
        clock (stocks), ``limit`` buckets of clock time may hold few bars (a weekend), so the
        window is widened (up to ``WIDEN_FACTORS``) until it holds ``limit`` bars."""
        answer = await self._get_window(q)
        if q.start is not None or len(answer.bars) >= q.limit:
            return answer
        if (await self.plugins.capabilities(q.series)).continuous:
            return answer
        size = tf_ms(q.timeframe)
        slack = -(-CLOSURE_SLACK_MS // size)  # buckets covering the longest market closure
        for factor in WIDEN_FACTORS:
            answer = await self._get_window(replace(q, limit=q.limit * factor + slack))
            if len(answer.bars) >= q.limit:
                break
        answer.bars = answer.bars[-q.limit:]
        return answer

    async def _get_window(self, q: BarQuery) -> BarAnswer:
        now = now_ms()
        a, b, nxt = window(q, now)
        current_min = now // MINUTE_MS * MINUTE_MS
        closed = b <= current_min
        if a >= b:
            return BarAnswer([], False, nxt, ["database"], closed)
        key = f"{q.series.key()}:{q.timeframe}:{a}:{b}"
        cached = await self.cache.get_answer(key)
        if cached is not None:
            return BarAnswer(None, bool(cached["partial"]), nxt, ["cache"], closed, raw_json=cached["bars_json"])
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._build(key, q, a, b, now))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        # shield: a client that disconnects must not cancel the build others are waiting for.
        answer = await asyncio.shield(task)
        return replace(answer, next=nxt, closed=closed)

    async def close(self) -> None:
        """Cancel answer builds still in flight (at shutdown) and wait for them to end."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, key: str, task: asyncio.Task[BarAnswer]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            # Every waiter got the exception already; this only marks it retrieved.
            log.debug("answer build for %s failed: %r", key, task.exception())

    async def _build(self, key: str, q: BarQuery, a: int, b: int, now: int) -> BarAnswer:
        size = tf_ms(q.timeframe)
        answer = await self._assemble(q.series, q.timeframe, a, b, now)
        # Sums of float volumes carry binary noise (3009.2870660000012); 8 decimals is exact enough.
        answer.bars = [[int(x[0]), x[1], x[2], x[3], x[4], round(x[5], 8)] for x in answer.bars]
        answer.partial = bool(answer.bars) and answer.bars[-1][0] + size > now
        if not answer.incomplete:
            # The last LEDGER_SAFETY_MS of closed minutes may still be corrected by the exchange
            # (they are refetched every time): an answer holding them is cached briefly too.
            settled = b <= now // MINUTE_MS * MINUTE_MS - LEDGER_SAFETY_MS
            ttl = self.ttl_closed if settled else self.ttl_forming
            await self.cache.put_answer(key, {"bars_json": answer.bars_json(), "partial": answer.partial}, ttl)
        return answer

    async def _assemble(self, series: Series, tf: str, a: int, b: int, now: int) -> BarAnswer:
        if self.aggregates is not None and self.db is not None:
            try:
                return await self._from_storage(series, tf, a, b, now)
            except DataSourceError as exc:
                log.warning("storage unavailable, answering without it: %s", exc.details)
        return await self._without_storage(series, tf, a, b, now)

    async def _from_storage(self, series: Series, tf: str, a: int, b: int, now: int) -> BarAnswer:
        assert self.aggregates is not None and self.db is not None
        current_min = now // MINUTE_MS * MINUTE_MS
        closed_end = min(b, current_min)
        safe_end = max(a, min(closed_end, current_min - LEDGER_SAFETY_MS))
        missing = await self.aggregates.missing(series, a, safe_end)
        recent = (safe_end, min(b, current_min + MINUTE_MS))
        to_fetch = merge_ranges(missing + ([recent] if recent[1] > recent[0] else []))
        sources = [] if missing == [(a, safe_end)] and safe_end > a else [self.aggregates.name_for(tf)]
        answer = BarAnswer([], False, None)
        fetched: list[Bar] = []
        runs: list[list[Bar]] = []  # one per range: the 1m cache replaces each fetch's own span
        budget = self.budget
        complete: list[tuple[int, int]] = []
        outage: NetworkPluginError | None = None
        try:
            if await self._too_far(series, to_fetch, now):
                native = await self._native(series, tf, a, b, missing)
                if native is not None:
                    return native
            to_fetch, answer.incomplete = await self._reachable(series, to_fetch, now)
            for x, y in to_fetch:
                bars, calls, until = await self.plugins.fetch(series, "1m", x, y, budget, True)
                budget -= calls
                fetched.extend(bars)
                runs.append(bars)
                complete.append((x, min(until, safe_end)))
                if until < y:
                    answer.incomplete = True
                    break
        except NetworkPluginError as exc:
            if not sources:
                raise
            log.warning("provider unavailable, serving stored bars: %s", exc)
            answer.incomplete, outage = True, exc
        if to_fetch and (fetched or not answer.incomplete):
            sources.append(self.plugins.name)
        closed_bars = [bar for bar in fetched if bar[0] + MINUTE_MS <= now]
        forming = [bar for bar in fetched if bar[0] + MINUTE_MS > now]
        await self.db.write(series, closed_bars, [r for r in complete if r[1] > r[0]])
        for run in runs:
            await self.cache.put_1m(series, [bar for bar in run if bar[0] + MINUTE_MS <= now])
        if answer.incomplete and self.on_missing is not None:
            still = await self.aggregates.missing(series, a, safe_end)
            answer.backfill_job = await self.on_missing(series, still) if still else None
        bars = await self.aggregates.read(series, tf, a, closed_end, (b - a) // tf_ms(tf))
        answer.bars = add_forming(bars, forming, tf)
        if outage is not None and not answer.bars:
            raise outage  # no stored bar can answer: 503, not an empty answer
        answer.sources = sources or [self.aggregates.name_for(tf)]
        return answer

    async def _too_far(self, series: Series, ranges: list[tuple[int, int]], now: int) -> bool:
        """1m paging of ``ranges`` needs too many calls, or older 1m bars than still served."""
        oldest = (await self.plugins.capabilities(series)).history_start("1m", now)
        if ranges and oldest is not None and ranges[0][0] < oldest:
            return True
        return await self.plugins.calls_needed(series, "1m", ranges) > self.budget

    async def _reachable(
        self, series: Series, ranges: list[tuple[int, int]], now: int
    ) -> tuple[list[tuple[int, int]], bool]:
        """``ranges`` cut to the 1m history the provider still serves; True when cut (that part
        is neither fetched nor recorded: it stays missing, the answer incomplete)."""
        oldest = (await self.plugins.capabilities(series)).history_start("1m", now)
        if oldest is None or not ranges or ranges[0][0] >= oldest:
            return ranges, False
        return [(max(x, oldest), y) for x, y in ranges if y > oldest], True

    async def _native(
        self, series: Series, tf: str, a: int, b: int, missing: list[tuple[int, int]]
    ) -> BarAnswer | None:
        """Fetch T directly when the provider serves it (range too large for 1m paging)."""
        if tf == "1m" or tf not in (await self.plugins.capabilities(series)).timeframes:
            return None
        bars, _, until = await self.plugins.fetch(series, tf, a, b, self.budget)
        job = await self.on_missing(series, missing) if self.on_missing and missing else None
        return BarAnswer(bars, False, None, [self.plugins.name], incomplete=until < b, backfill_job=job)

    async def _without_storage(self, series: Series, tf: str, a: int, b: int, now: int) -> BarAnswer:
        current_min = now // MINUTE_MS * MINUTE_MS
        closed_end = min(b, current_min)
        cached = await self.cache.get_1m(series, a, closed_end)
        continuous = (await self.plugins.capabilities(series)).continuous
        if cached and continuous and len(cached) == (closed_end - a) // MINUTE_MS:
            try:
                recent, _, _ = await self.plugins.fetch(
                    series, "1m", closed_end, min(b, current_min + MINUTE_MS), 1)
            except NetworkPluginError as exc:  # the closed minutes are cached: serve them
                log.warning("provider unavailable, serving cached bars: %s", exc)
                return BarAnswer(resample(cached, tf), False, None, ["cache"], incomplete=True)
            forming = [bar for bar in recent if bar[0] + MINUTE_MS > now]
            sources = ["cache", "provider"] if recent else ["cache"]  # a closed window needs no call
            return BarAnswer(add_forming(resample(cached, tf), forming, tf), False, None, sources)
        end = min(b, current_min + MINUTE_MS)
        if await self._too_far(series, [(a, end)], now):
            native = await self._native(series, tf, a, b, [])
            if native is not None:
                return native
        reachable, cut = await self._reachable(series, [(a, end)], now)
        fetched: list[Bar] = []
        until = end
        for x, y in reachable:
            fetched, _, until = await self.plugins.fetch(series, "1m", x, y, self.budget)
        closed_bars = [bar for bar in fetched if bar[0] + MINUTE_MS <= now]
        forming = [bar for bar in fetched if bar[0] + MINUTE_MS > now]
        await self.cache.put_1m(series, closed_bars)
        bars = add_forming(resample(closed_bars, tf), forming, tf)
        return BarAnswer(bars, False, None, ["provider"], incomplete=cut or until < end)
