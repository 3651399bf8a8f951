"""The one way to call a provider, shared by REST (sources, symbols, ticker), live pollers and
backfill.

Public names (stable): ``ProviderCalls`` (``guard``, ``call``, ``pages``, ``fetch_range``,
``first_bar``, ``listing``), ``Fetched``, ``LISTING_GAP_MS``.

Every upstream call goes through ``ProviderCalls.call``:
1. ``guard(provider)``: the per-provider gate: the provider's circuit breaker
   (``services.upstream.breaker``, refuses at once while open) and the cluster-wide budget and ban pause
   (``ProviderBudget``), so every path gets both, asked in one Redis script
   (``services.upstream.gate``).
2. ``observe_call``: the ``provider_calls_total`` / latency metrics.
3. The plugin method itself. Temporary errors of one upstream request are retried inside the
   plugin with ``plugins.retry.RetryPolicy`` (the one retry policy: backfill retries its chunks
   with the same class), so a retry never takes a second budget slot.

``pages`` is the one OHLCV paging loop: from ``since`` up to ``end`` (a range, REST and backfill)
or up to the newest bucket (``end=None``, live pollers), within ``max_bars_per_call`` per call and
a budget of calls.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from core.errors import NetworkPluginError, PluginFeatureNotSupportedError
from core.metrics import observe_call
from core.timeframes import Bar, now_ms, tf_ms
from core.types import Series
from plugins.base import MarketPlugin
from services.upstream.breaker import CircuitBreaker
from services.upstream.budget import ProviderBudget
from services.upstream.gate import ProviderGate

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A fetch whose first bar comes this long after the start it asked for tells the symbol's listing
#: (no market halts for a week; weekends and holidays are shorter).
LISTING_GAP_MS = 7 * 24 * 3600 * 1000


@dataclass
class Fetched:
    """Bars fetched by ``pages``: ``calls`` made, and [since, ``until``) covered (``until`` below
    the asked end when the budget ran out or, with ``keep_partial``, the provider failed)."""

    bars: list[Bar]
    calls: int
    until: int


def _normal(page: list[Bar], since: int, end: int | None, normalized: bool) -> list[Bar]:
    """The bars of ``page`` with ``since <= ts < end`` as ``[int, float x 5]`` lists; a
    ``normalized`` provider's page is taken as it is when its ends are inside."""
    stop = end if end is not None else math.inf
    if normalized and (not page or (since <= page[0][0] and page[-1][0] < stop)):
        return page
    f = float
    return [[int(b[0]), f(b[1]), f(b[2]), f(b[3]), f(b[4]), f(b[5])] for b in page
            if since <= b[0] < stop]


class ProviderCalls:
    """Guarded, measured calls to providers, and the paging loop over them."""

    def __init__(self, budget: ProviderBudget, breaker: CircuitBreaker | None = None) -> None:
        self.budget = budget
        self.breaker = breaker
        self.gate = ProviderGate(budget, breaker) if breaker is not None else None
        #: Listings learned from first pages, by (provider, symbol).
        self._listings: dict[tuple[str, str], int] = {}

    @asynccontextmanager
    async def guard(self, provider: str, testnet: bool = False, weight: int = 1) -> AsyncIterator[None]:
        """The per-provider gate around one upstream call: the circuit breaker first (an open one
        refuses at once, before any budget wait), then the budget (``weight`` units: the call's
        request weight at the exchange) and ban pause. A testnet (a user's sandbox credentials) is
        another host: it has a breaker of its own."""
        if self.gate is None:
            async with self.budget.guard(provider, weight):
                yield
            return
        async with self.gate.guard(provider, testnet, weight):  # one Redis script for both
            yield

    async def call(
        self, provider: str, method: str, fn: Callable[[], Awaitable[T]], testnet: bool = False,
        weight: int = 1,
    ) -> T:
        """``await fn()`` (one plugin call of ``weight`` budget units) under the guard and the call
        metrics."""
        async with self.guard(provider, testnet, weight):
            with observe_call(provider, method):
                return await fn()

    async def pages(
        self, plugin: MarketPlugin, series: Series, timeframe: str, since: int, end: int | None, *,
        budget: int = 1_000_000, keep_partial: bool = False, last_wanted: int | None = None,
        on_call: Callable[[], None] | None = None,
    ) -> Fetched:
        """Bars of ``timeframe`` from ``since``: up to ``end`` (exclusive), or with ``end=None``
        until a page reaches ``last_wanted`` (live pollers: the bucket before the forming one).

        Only an empty page ends a range early: a short one may be a provider answering fewer bars
        than asked (OKX's history endpoint: 100), and reading it as the end would record a hole
        as complete. ``keep_partial``: a provider failure after some pages returns those pages
        (``until`` says how far they reach) instead of raising."""
        per_call, size = plugin.capabilities.max_bars_per_call, tf_ms(timeframe)
        provider, symbol = series.provider, series.symbol
        weight = plugin.call_weight("fetch_ohlcv")
        out: list[Bar] = []
        calls = 0
        while calls < budget and (end is None or since < end):
            want = per_call if end is None else min(per_call, math.ceil((end - since) / size))
            if on_call is not None:
                on_call()
            try:
                page = await self.call(provider, "fetch_ohlcv", functools.partial(
                    plugin.fetch_ohlcv, symbol, timeframe, since, want, end), plugin.testnet, weight)
            except NetworkPluginError as exc:
                if not (keep_partial and out):
                    raise
                log.warning("provider unavailable after %d pages, keeping them: %s", calls, exc)
                break
            calls += 1
            used = plugin.used_weight()
            if used is not None:
                await self.budget.read_back(provider, used)
            page = _normal(page, since, end, plugin.capabilities.normalized)
            out.extend(page)
            if not page:
                since = end if end is not None else since
                break
            since = int(page[-1][0]) + size
            if last_wanted is not None and page[-1][0] >= last_wanted:
                break
        return Fetched(out, calls, since if end is None else min(since, end))

    async def fetch_range(
        self, plugin: MarketPlugin, series: Series, timeframe: str, start: int, end: int,
        budget: int, keep_partial: bool = False,
    ) -> Fetched:
        """Bars of [start, end) in pages (REST and backfill). Raises
        ``PluginFeatureNotSupportedError`` when ``start`` is older than the provider still serves
        for ``timeframe``: its pages would come back empty or start late, and the ledger would
        record history the provider has as verified empty."""
        oldest = plugin.capabilities.history_start(timeframe, now_ms())
        if oldest is not None and start < oldest:
            raise PluginFeatureNotSupportedError(
                f"{series.provider} serves only its latest {timeframe} bars (from {oldest})",
                details={"start": [f"{series.provider} {timeframe} history starts at {oldest}"]})
        got = await self.pages(plugin, series, timeframe, start, end, budget=budget,
                               keep_partial=keep_partial)
        if got.bars and got.bars[0][0] - start >= LISTING_GAP_MS:
            self._learn(series, int(got.bars[0][0]))
        return got

    async def first_bar(self, plugin: MarketPlugin, series: Series, since: int) -> int | None:
        """Open time of the first 1m bar at or after ``since`` (one call), or None when there is
        none up to now."""
        page = await self.call(series.provider, "fetch_ohlcv", functools.partial(
            plugin.fetch_ohlcv, series.symbol, "1m", since, 1), plugin.testnet,
            plugin.call_weight("fetch_ohlcv"))
        first = next((int(b[0]) for b in page if b[0] >= since), None)
        if first is not None and first - since >= LISTING_GAP_MS:
            self._learn(series, first)
        return first

    def listing(self, plugin: MarketPlugin, series: Series) -> int | None:
        """When ``series``' history starts: as the provider states it, else as a first page told
        (the bucket of the first bar a fetch reaching far back found), else None."""
        known = plugin.listing_ms(series.symbol)
        return known if known is not None else self._listings.get((series.provider, series.symbol))

    def _learn(self, series: Series, first: int) -> None:
        key = (series.provider, series.symbol)
        if first < self._listings.get(key, first + 1):
            log.info("%s: history starts by %d (a first page told)", series.key(), first)
            self._listings[key] = first
