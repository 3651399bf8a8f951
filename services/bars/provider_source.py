"""The provider's link of the orchestrator's chain, where every provider rule lives.

Public names (stable): ``ProviderSource``, ``PluginSource``, ``add_forming``.

``ProviderSource.fill`` fetches the 1m ranges the sources before it left missing:
- within the call budget (``OHLCV_MAX_PROVIDER_CALLS``), paging within ``max_bars_per_call``
  (``ProviderCalls``, the one provider-call path);
- a range that needs more calls than the budget, or older 1m bars than the provider still serves
  (``history_bars``), is fetched in the query's timeframe directly when the provider serves it
  natively; the 1m history is then left to a backfill job;
- minutes older than the provider serves, beyond the budget or lost to an outage stay missing:
  the answer is marked incomplete (an outage with nothing else to answer from is raised);
- closed 1m bars are written through, in this one place, to storage (with the ledger ranges now
  complete and the aggregates they touch) and to the 1m cache; the forming minute never is.
With storage, the window is then read back from it (aggregated by the database); without, the
fetched minutes (or the cached ones before them) are resampled here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from core.errors import NetworkPluginError
from core.timeframes import MINUTE_MS, Bar, bucket_start, resample
from core.types import Series, subtract_ranges
from plugins.base import Capabilities, MarketPlugin
from services.bars.sources import CacheSource, DataSource, Fill, Range, StorageSource, Window
from services.upstream.market_service import MarketService

log = logging.getLogger(__name__)


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


def _clip(ranges: Sequence[Range], a: int, b: int) -> list[Range]:
    return [(max(x, a), min(y, b)) for x, y in ranges if min(y, b) > max(x, a)]


class PluginSource:
    """A provider's capabilities, and ranges of bars fetched through ``ProviderCalls``."""

    name = "provider"

    def __init__(self, markets: MarketService) -> None:
        self.markets = markets

    async def capabilities(self, series: Series) -> Capabilities:
        """The provider's capabilities (per-call limit, native timeframes, history depth, ...)."""
        plugin = await self.markets.get_plugin(series.market, series.provider)
        return plugin.capabilities

    async def fetch(
        self, series: Series, timeframe: str, start: int, end: int, budget: int,
        keep_partial: bool = False,
    ) -> tuple[list[Bar], int, int]:
        """Bars of [start, end) in pages (``ProviderCalls.fetch_range``); returns (bars, calls
        made, covered_until)."""
        plugin = await self.markets.get_plugin(series.market, series.provider)
        got = await self.markets.calls.fetch_range(plugin, series, timeframe, start, end, budget,
                                                   keep_partial)
        return got.bars, got.calls, got.until

    async def first_bar(self, series: Series, since: int) -> int | None:
        """Open time of the first 1m bar at or after ``since`` (one provider call), or None."""
        plugin = await self.markets.get_plugin(series.market, series.provider)
        return await self.markets.calls.first_bar(plugin, series, since)


class ProviderSource(PluginSource, DataSource):
    """The last link: see the module docstring. ``store`` None: the chain without storage."""

    def __init__(self, markets: MarketService, cache: CacheSource, store: StorageSource | None,
                 budget: int) -> None:
        super().__init__(markets)
        self.cache, self.store, self.budget = cache, store, budget

    async def fill(self, w: Window, got: Fill) -> Fill:
        """The missing minutes fetched and written through; the window's bars."""
        plugin = await self.markets.get_plugin(w.series.market, w.series.provider)
        caps, ranges = plugin.capabilities, got.missing
        # Before the symbol's listing there is nothing to fetch: those minutes are known empty.
        listed = plugin.listing_ms(w.series.symbol)
        before = _clip(ranges, 0, listed) if listed is not None else []
        ranges = _clip(ranges, listed, w.b) if listed is not None else ranges
        oldest = caps.history_start("1m", w.now)
        too_old = bool(ranges) and oldest is not None and ranges[0][0] < oldest
        reachable = ranges if not too_old else [(max(x, oldest or x), y) for x, y in ranges
                                                if oldest is None or y > oldest]
        outage: NetworkPluginError | None = None
        if too_old or self._calls_needed(caps, ranges) > self.budget:
            try:
                native = await self._native(plugin, w, got)
            except NetworkPluginError as exc:
                native, reachable, outage = None, [], self._outage(exc, got)
            if native is not None:
                return native
        fetched, runs, covered, fetch_outage = await self._fetch(plugin, w, reachable, got)
        outage, covered = outage or fetch_outage, before + covered
        still = [r for x, y in got.missing for r in subtract_ranges(x, y, covered)]
        incomplete = bool(still) or got.incomplete
        closed = [bar for bar in fetched if bar[0] + MINUTE_MS <= w.now]
        forming = [bar for bar in fetched if bar[0] + MINUTE_MS > w.now]
        if self.store is not None:
            complete = [(x, min(y, w.safe_end)) for x, y in covered if min(y, w.safe_end) > x]
            bars = await self.store.write_and_read(w, closed, complete)
        else:
            bars = got.bars if got.bars is not None else resample(closed, w.timeframe)
        for run in runs:
            await self.cache.put_1m(w.series, [bar for bar in run if bar[0] + MINUTE_MS <= w.now])
        bars = add_forming(bars, forming, w.timeframe)
        names = got.names + (["provider"] if fetched or (not incomplete and got.bars is None) else [])
        if not names:
            names = [self.store.name(w)] if self.store is not None else ["provider"]
        backfill = self._backfill(plugin, w, still) if incomplete else []
        if outage is not None and not bars:
            raise outage  # no stored bar can answer: 503, not an empty answer
        return Fill(bars, still, names, incomplete, backfill)

    async def _fetch(
        self, plugin: MarketPlugin, w: Window, ranges: list[Range], got: Fill
    ) -> tuple[list[Bar], list[list[Bar]], list[Range], NetworkPluginError | None]:
        """(bars, one run per range fetched, the ranges covered, the outage). An outage is kept
        (its ranges stay missing) when something else can answer (``got.names``), else raised."""
        fetched: list[Bar] = []
        runs: list[list[Bar]] = []  # one per range: the 1m cache replaces each fetch's own span
        covered: list[Range] = []
        budget, outage = self.budget, None
        try:
            for x, y in ranges:
                page = await self.markets.calls.fetch_range(
                    plugin, w.series, "1m", x, y, budget, keep_partial=self.store is not None)
                budget -= page.calls
                fetched.extend(page.bars)
                runs.append(page.bars)
                covered.append((x, page.until))
                if page.until < y:
                    break
        except NetworkPluginError as exc:
            outage = self._outage(exc, got)
        return fetched, runs, covered, outage

    @staticmethod
    def _outage(exc: NetworkPluginError, got: Fill) -> NetworkPluginError:
        """Raise ``exc`` unless an earlier source found something to answer with."""
        if not got.names:
            raise exc
        log.warning("provider unavailable, serving what is stored: %s", exc)
        return exc

    def _calls_needed(self, caps: Capabilities, ranges: Sequence[Range]) -> int:
        return sum(math.ceil((b - a) / MINUTE_MS / caps.max_bars_per_call) for a, b in ranges)

    async def _native(self, plugin: MarketPlugin, w: Window, got: Fill) -> Fill | None:
        """The window fetched in its timeframe directly, when the provider serves it natively
        (1m paging would need too many calls or older history than the provider keeps)."""
        if w.timeframe == "1m" or w.timeframe not in plugin.capabilities.timeframes:
            return None
        page = await self.markets.calls.fetch_range(plugin, w.series, w.timeframe, w.a, w.b,
                                                    self.budget)
        return Fill(page.bars, [], ["provider"], page.until < w.b,
                    self._backfill(plugin, w, got.missing))

    def _backfill(self, plugin: MarketPlugin, w: Window, missing: Sequence[Range]) -> list[Range]:
        """Closed minutes left to a backfill job (with storage): none before the listing."""
        if self.store is None:
            return []
        listing = self.markets.calls.listing(plugin, w.series)
        return _clip(missing, max(w.a, listing or w.a), w.safe_end)
