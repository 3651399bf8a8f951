"""DataOrchestrator: answers OHLCV queries from the answer cache, else over a chain of sources.

Public names (stable): ``DataOrchestrator``, ``OrchestratorSettings``, ``BarQuery``,
``BarAnswer``, ``window``, ``widened``, ``WIDEN_FACTORS``, ``CLOSURE_SLACK_MS``.

The path of one query of timeframe T, top to bottom:
1. ``window``: the buckets [a, b) it covers and the ``next`` page; ``open_window`` works out the
   ``Window`` the sources read (plain values: a source never calls back here);
2. the answer cache (closed ranges cached long, ranges with the forming bar briefly), then one
   build per window at a time (concurrent identical queries share it);
3. the chain (``services.bars.sources``): each source's ``fill`` adds what it has and returns.
   Storage up: ``StorageSource`` then ``ProviderSource`` (fetches what the ledger lacks). Storage
   down (a ``DataSourceError``): ``Cache1mSource`` then the provider without storage;
4. the write-through, here only: what the provider fetched goes to storage (the window is read
   back from it), and the forming minute is folded into the last bar;
5. the backfill hook for closed minutes left missing, then one cache write: the fetched closed
   minutes to the 1m cache and the answer, unless incomplete.
Markets that close (stocks) widen latest-bars windows until they hold ``limit`` bars. A user's own
answer is this class over the user's provider source alone (``services.bars.ohlcv.users_chain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from core.errors import DataSourceError
from core.timeframes import MINUTE_MS, Bar, bucket_ceil, bucket_start, now_ms, resample, round_bar, tf_ms
from core.types import Series
from services.bars.cache import BestEffortCache
from services.bars.provider_source import ProviderClient
from services.bars.query import BarAnswer, BarQuery
from services.bars.sources import LEDGER_SAFETY_MS, DataSource, Fill, StorageSource, Window
from services.settings import setting
from services.upstream.deadline import DeadlineExceeded, remaining, request_deadline

__all__ = ["CLOSURE_SLACK_MS", "WIDEN_FACTORS", "BarAnswer", "BarQuery", "DataOrchestrator",
           "OrchestratorSettings", "widened", "window"]
log = logging.getLogger(__name__)

#: How far back (in multiples of ``limit`` buckets) a latest-bars query looks in markets that close.
WIDEN_FACTORS = (1, 2, 4, 8)
#: ... plus this much clock time: a long weekend (Friday close to Tuesday open).
CLOSURE_SLACK_MS = 4 * 24 * 60 * MINUTE_MS

MissingHook = Callable[[Series, list[tuple[int, int]]], Awaitable[str | None]]


@dataclass(frozen=True)
class OrchestratorSettings:
    """``build(OrchestratorSettings, config)``."""

    ttl_closed: int = setting("CACHE_TTL_CLOSED")
    ttl_forming: int = setting("CACHE_TTL_FORMING")
    #: Most upstream calls one query may make before the rest is left to a backfill job.
    max_provider_calls: int = setting("OHLCV_MAX_PROVIDER_CALLS")
    #: Seconds within which every answer comes (from stored data when the provider is slower).
    deadline: float = setting("REQUEST_DEADLINE")


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


def widened(q: BarQuery, factor: int) -> BarQuery:
    """``q`` (latest bars, or a page) over ``factor`` times its ``limit`` buckets plus those of
    the longest closure: the window of a market that closes that should hold ``limit`` bars."""
    slack = -(-CLOSURE_SLACK_MS // tf_ms(q.timeframe))  # buckets of the longest closure
    return replace(q, limit=q.limit * factor + slack)


class DataOrchestrator:
    """Answers ``BarQuery``s; collaborators (the chains, the hook) come in the constructor."""

    def __init__(
        self,
        cache: BestEffortCache,
        chain: Sequence[DataSource],
        fallback: Sequence[DataSource],
        provider: ProviderClient,
        settings: OrchestratorSettings,
        on_missing: MissingHook | None = None,
        store: StorageSource | None = None,
    ) -> None:
        self.cache, self.provider, self.settings = cache, provider, settings
        #: Where ``chain``'s fetches are written through (and the window read back), and what
        #: answers a window when the provider misses the deadline (else the 1m cache).
        self.store = store
        #: The chain with storage, and the one without it (run when storage fails).
        self.chain, self.fallback = list(chain), list(fallback)
        #: Called with closed ranges left unfetched; returns a backfill job id.
        self.on_missing = on_missing
        #: Answers being built, by cache key: concurrent identical queries share one build
        #: (one upstream fetch) instead of stampeding the provider.
        self._inflight: dict[str, asyncio.Task[BarAnswer]] = {}

    async def get_bars(self, q: BarQuery) -> BarAnswer:
        """Bars for ``q``: strictly ascending, no duplicates, the forming bar flagged ``partial``.

        ``limit`` counts bars, not buckets: a window of ``limit`` buckets may hold fewer bars
        (nights, weekends, halts), so it is widened (up to ``WIDEN_FACTORS``) until it holds
        ``limit`` bars: the latest ones without ``start`` (in markets that close), the first ones
        of a page from ``start``. A page before the symbol's first bar jumps to it, so a page is
        never empty while ``next`` is set. Answers come within ``REQUEST_DEADLINE``: from stored
        data, marked incomplete, when the provider is slower (its fetch goes on in the
        background), else ``DeadlineExceeded`` (503)."""
        async with request_deadline(self.settings.deadline):
            answer = await self._get_bars(q)
        a, b, _ = window(q, now_ms())
        answer.span = (a, b)  # the answer is this call's own copy (``_get_window``)
        return answer

    async def _get_bars(self, q: BarQuery) -> BarAnswer:
        if q.start is None:
            answer = await self._get_window(q)
            if len(answer.bars) >= q.limit or (await self.provider.capabilities(q.series)).continuous:
                return answer
            answer = await self._widen(q, answer)
            answer.bars = answer.bars[-q.limit:]
            return answer
        return await self._page(q)

    async def _page(self, q: BarQuery) -> BarAnswer:
        answer = await self._get_window(q)
        bars = answer.bars
        if not bars and answer.next is not None and answer.next > now_ms():
            return replace(answer, next=None)  # no bar opens after now: the exchange is not asked
        if not bars and answer.next is not None:
            try:
                first = await asyncio.wait_for(self.provider.first_bar(q.series, answer.next),
                                               remaining())
            except TimeoutError:
                raise self._late(q.series) from None
            if first is None or (q.end is not None and first >= q.end):
                return replace(answer, next=None)  # nothing more up to the range's end
            q = replace(q, start=max(int(q.start or 0), bucket_start(first, q.timeframe)))
            answer = await self._get_window(q)
            bars = answer.bars
        if answer.next is None or len(bars) >= q.limit:
            return answer
        answer = await self._widen(q, answer)
        if len(answer.bars) > q.limit:
            answer.bars = answer.bars[:q.limit]
            answer.partial, answer.next = False, int(answer.bars[-1][0]) + tf_ms(q.timeframe)
        return answer

    async def _widen(self, q: BarQuery, answer: BarAnswer) -> BarAnswer:
        """Wider windows until one holds ``limit`` bars (or the range ends)."""
        for factor in WIDEN_FACTORS:
            answer = await self._get_window(widened(q, factor))
            if len(answer.bars) >= q.limit or (q.start is not None and answer.next is None):
                break
        return answer

    async def _get_window(self, q: BarQuery) -> BarAnswer:
        now = now_ms()
        a, b, nxt = window(q, now)
        w = open_window(q.series, q.timeframe, a, b, now)
        closed = w.closed
        if a >= b:
            return BarAnswer([], False, nxt, ["database"], closed)
        key = f"{q.series.key()}:{q.timeframe}:{a}:{b}"
        cached = await self.cache.get_answer(key)
        if cached is not None:
            return BarAnswer(None, bool(cached["partial"]), nxt, ["cache"], closed, raw_json=cached["bars_json"])
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._build(key, w))
            self._inflight[key] = task
        # shield: neither a client that disconnects nor the deadline cancels the build (others
        # may wait for it; it fills storage and the cache for the next request). When no waiter
        # is left, the shield marks the build's exception retrieved.
        try:
            answer = await asyncio.wait_for(asyncio.shield(task), remaining())
        except TimeoutError:
            answer = await self._stored(w)
        return replace(answer, next=nxt, closed=closed)

    async def _stored(self, w: Window) -> BarAnswer:
        """The window from storage (else the 1m cache), marked incomplete: the provider missed
        the deadline. Nothing stored: ``DeadlineExceeded``."""
        bars, names = [], ["cache"]
        if self.store is not None:
            with contextlib.suppress(DataSourceError):
                bars, names = await self.store.read(w), [self.store.name(w)]
        if not bars:
            bars = resample(await self.cache.get_1m(w.series, w.start, w.closed_end), w.timeframe)
        if not bars:
            raise self._late(w.series)
        return BarAnswer(bars, partial(w, bars), None, names, incomplete=True)

    def _late(self, series: Series) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"{series.provider} did not answer within REQUEST_DEADLINE ({self.settings.deadline:g} s)"
            " and no stored bar can answer", retry_after=max(1.0, self.settings.deadline))

    async def close(self) -> None:
        """Cancel answer builds still in flight (at shutdown) and wait for them to end."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()  # builds cancelled before they began never ran their ``finally``

    async def _build(self, key: str, w: Window) -> BarAnswer:
        """One build of a window: the chain, the backfill hook, then the cache writes (the
        fetched closed minutes and, unless incomplete, the answer) in one call."""
        try:
            fill, runs = await self._fill(w)
            job = await self.on_missing(w.series, fill.backfill) if fill.backfill and self.on_missing else None
            # Sums of float volumes carry binary noise (3009.2870660000012); 8 decimals is exact enough.
            bars = [round_bar(x) for x in fill.bars or []]  # as WebSocket frames are
            answer = BarAnswer(bars, partial(w, bars), None, fill.names, incomplete=fill.incomplete,
                               backfill_job=job, raw_json=json.dumps(bars, separators=(",", ":")))
            cached, ttl = None, 0
            if not answer.incomplete:
                # The last LEDGER_SAFETY_MS of closed minutes may still be corrected by the
                # exchange (they are refetched every time): an answer holding them is cached
                # briefly too.
                settled = w.end <= w.current_min - LEDGER_SAFETY_MS
                ttl = self.settings.ttl_closed if settled else self.settings.ttl_forming
                cached = {"bars_json": answer.raw_json, "partial": answer.partial}
            await self.cache.put_window(w.series, runs, key, cached, ttl)
            return answer
        finally:
            self._inflight.pop(key, None)

    async def _fill(self, w: Window) -> tuple[Fill, list[list[Bar]]]:
        """The loop over the chain (the chain without storage when storage fails): the window's
        fill, and the closed 1m runs fetched, for the 1m cache."""
        if self.chain:
            try:
                return await self._run(self.chain, w, self.store)
            except DataSourceError as exc:
                log.debug("storage unavailable, answering without it: %s", exc.details)  # Database logs the outage once
        return await self._run(self.fallback, w, None)

    async def _run(self, chain: Sequence[DataSource], w: Window,
                   store: StorageSource | None) -> tuple[Fill, list[list[Bar]]]:
        got = Fill(None, [(w.start, w.fetch_end)])
        for source in chain:
            got = await source.fill(w, got)
            if not got.missing and got.bars is not None:
                break
        if got.fetched is None:  # answered without a provider's 1m fetch: nothing to write
            return got, []
        return await self._write_through(w, got, store)

    async def _write_through(self, w: Window, got: Fill,
                             store: StorageSource | None) -> tuple[Fill, list[list[Bar]]]:
        """Closed fetched 1m bars to ``store`` (with the ledger ranges now complete, the window
        then read back from it), and returned for the 1m cache (``_build`` writes it); the
        forming minute is never written, only folded into the last bar. Without ``store`` the
        window is what an earlier source found, else the fetched minutes resampled. A kept
        outage is raised when no bar can answer."""
        runs = got.fetched or []
        closed = [bar for run in runs for bar in run if bar[0] + MINUTE_MS <= w.now]
        forming = [bar for run in runs for bar in run if bar[0] + MINUTE_MS > w.now]
        names = got.names or ([store.name(w)] if store is not None else ["provider"])
        if store is not None:
            bars = await store.write_and_read(w, closed, got.complete)
        else:
            bars = got.bars if got.bars is not None else resample(closed, w.timeframe)
        bars = add_forming(bars, forming, w.timeframe)
        if got.outage is not None and not bars:
            raise got.outage  # no stored bar can answer: 503, not an empty answer
        cache_runs = [[bar for bar in run if bar[0] + MINUTE_MS <= w.now] for run in runs]
        return replace(got, bars=bars, names=names, fetched=None, complete=[]), cache_runs


def open_window(series: Series, timeframe: str, start: int, end: int, now: int) -> Window:
    """The window [start, end) of ``timeframe`` seen at ``now``, its bounds worked out once."""
    current_min = now // MINUTE_MS * MINUTE_MS
    closed_end = min(end, current_min)
    return Window(series, timeframe, start, end, now, current_min, closed_end,
                  fetch_end=min(end, current_min + MINUTE_MS),
                  safe_end=max(start, min(closed_end, current_min - LEDGER_SAFETY_MS)),
                  closed=end <= current_min)


def partial(w: Window, bars: Sequence[Bar]) -> bool:
    """Whether the last of ``bars`` (the window's) is still forming."""
    return bool(bars) and bars[-1][0] + tf_ms(w.timeframe) > w.now


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
