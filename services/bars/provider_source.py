"""The provider's link of the orchestrator's chain, where every provider rule lives.

Public names (stable): ``ProviderSource``, ``ProviderClient``.

``ProviderSource.fill`` fetches the 1m ranges the sources before it left missing:
- within the call budget (``OHLCV_MAX_PROVIDER_CALLS``), paging within ``max_bars_per_call``
  (``ProviderCalls``, the one provider-call path);
- a range that needs more calls than the budget, or older 1m bars than the provider still serves
  (``history_bars``), is fetched in the query's timeframe directly when the provider serves it
  natively; the 1m history is then left to a backfill job;
- minutes older than the provider serves, beyond the budget or lost to an outage stay missing:
  the answer is marked incomplete (an outage with nothing else to answer from is raised);
- what it fetched goes back in the ``Fill`` (``fetched``, and the ledger ranges now ``complete``):
  the orchestrator writes it through, in one place, and reads the window back.
Given a user's own credentials (``user``) it is the chain of a user's answer on its own: the
user's plugin instance, the window in its own timeframe when the provider serves it natively
(else 1m bars resampled), from the oldest bar the provider still serves; nothing to write through,
since nothing of it is cached or stored.
``ProviderClient`` is the provider as the orchestrator and backfill jobs ask it directly:
capabilities, ranges of bars, the first bar (a user's own instance given ``user``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from core.errors import NetworkPluginError
from core.timeframes import MINUTE_MS, Bar, resample
from core.types import Series, subtract_ranges
from plugins.base import Capabilities, MarketPlugin
from services.bars.sources import DataSource, Fill, Range, Window
from services.upstream.credentials import UserCredentials
from services.upstream.market_service import MarketService

log = logging.getLogger(__name__)


def _clip(ranges: Sequence[Range], a: int, b: int) -> list[Range]:
    return [(max(x, a), min(y, b)) for x, y in ranges if min(y, b) > max(x, a)]


class ProviderClient:
    """A provider reached through ``MarketService``: its capabilities, ranges of bars fetched
    through ``ProviderCalls`` and the first bar of a symbol (no chain, no storage)."""

    def __init__(self, markets: MarketService, user: UserCredentials | None = None) -> None:
        self.markets, self.user = markets, user

    async def capabilities(self, series: Series) -> Capabilities:
        """The provider's capabilities (per-call limit, native timeframes, history depth, ...)."""
        plugin = await self.markets.get_plugin(series.market, series.provider, self.user)
        return plugin.capabilities

    async def fetch(
        self, series: Series, timeframe: str, start: int, end: int, budget: int,
        keep_partial: bool = False,
    ) -> tuple[list[Bar], int, int]:
        """Bars of [start, end) in pages (``ProviderCalls.fetch_range``); returns (bars, calls
        made, covered_until)."""
        plugin = await self.markets.get_plugin(series.market, series.provider, self.user)
        got = await self.markets.calls.fetch_range(plugin, series, timeframe, start, end, budget,
                                                   keep_partial)
        return got.bars, got.calls, got.until

    async def first_bar(self, series: Series, since: int) -> int | None:
        """Open time of the first 1m bar at or after ``since`` (one provider call), or None."""
        plugin = await self.markets.get_plugin(series.market, series.provider, self.user)
        return await self.markets.calls.first_bar(plugin, series, since)


class ProviderSource(DataSource):
    """The last link: see the module docstring. ``stored`` False: the chain without storage (no
    partial pages kept for a ledger, nothing left to a backfill job). ``user``: a user's own
    credentials, the whole chain of a user's answer."""

    def __init__(self, markets: MarketService, budget: int, stored: bool,
                 user: UserCredentials | None = None) -> None:
        self.markets, self.budget, self.stored, self.user = markets, budget, stored, user

    async def fill(self, w: Window, got: Fill) -> Fill:
        """The missing minutes fetched (for the orchestrator to write through)."""
        plugin = await self.markets.get_plugin(w.series.market, w.series.provider, self.user)
        if self.user is not None:
            return await self._own(plugin, w)
        caps, ranges = plugin.capabilities, got.missing
        # Before the symbol's listing there is nothing to fetch: those minutes are known empty.
        listed = plugin.listing_ms(w.series.symbol)
        before = _clip(ranges, 0, listed) if listed is not None else []
        ranges = _clip(ranges, listed, w.end) if listed is not None else ranges
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
        runs, covered, fetch_outage = await self._fetch(plugin, w, reachable, got)
        outage, covered = outage or fetch_outage, before + covered
        still = [r for x, y in got.missing for r in subtract_ranges(x, y, covered)]
        incomplete = bool(still) or got.incomplete
        complete = [(x, min(y, w.safe_end)) for x, y in covered if min(y, w.safe_end) > x]
        names = got.names + (["provider"] if any(runs) or (not incomplete and got.bars is None) else [])
        backfill = self._backfill(plugin, w, still) if incomplete else []
        return Fill(got.bars, still, names, incomplete, backfill, runs,
                    complete if self.stored else [], outage)

    async def _own(self, plugin: MarketPlugin, w: Window) -> Fill:
        """A user's window: in its timeframe when the provider serves it natively, else 1m bars
        resampled, from the oldest bar the provider still serves (later: incomplete)."""
        caps = plugin.capabilities
        timeframe = w.timeframe if w.timeframe in caps.timeframes else "1m"
        oldest = caps.history_start(timeframe, w.now)
        start = w.start if oldest is None else max(w.start, oldest)
        page = await self.markets.calls.pages(plugin, w.series, timeframe, start, w.fetch_end,
                                              budget=self.budget)
        bars = page.bars if timeframe == w.timeframe else resample(page.bars, w.timeframe)
        return Fill(bars, [], ["provider"], page.until < w.fetch_end or start > w.start)

    async def _fetch(
        self, plugin: MarketPlugin, w: Window, ranges: list[Range], got: Fill
    ) -> tuple[list[list[Bar]], list[Range], NetworkPluginError | None]:
        """(one run of bars per range fetched, the ranges covered, the outage). An outage is kept
        (its ranges stay missing) when something else can answer (``got.names``), else raised."""
        runs: list[list[Bar]] = []  # one per range: the 1m cache replaces each fetch's own span
        covered: list[Range] = []
        budget, outage = self.budget, None
        try:
            for x, y in ranges:
                page = await self.markets.calls.fetch_range(
                    plugin, w.series, "1m", x, y, budget, keep_partial=self.stored)
                budget -= page.calls
                runs.append(page.bars)
                covered.append((x, page.until))
                if page.until < y:
                    break
        except NetworkPluginError as exc:
            outage = self._outage(exc, got)
        return runs, covered, outage

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
        page = await self.markets.calls.fetch_range(plugin, w.series, w.timeframe, w.start, w.end,
                                                    self.budget)
        return Fill(page.bars, [], ["provider"], page.until < w.end,
                    self._backfill(plugin, w, got.missing))

    def _backfill(self, plugin: MarketPlugin, w: Window, missing: Sequence[Range]) -> list[Range]:
        """Closed minutes left to a backfill job (with storage): none before the listing."""
        if not self.stored:
            return []
        listing = self.markets.calls.listing(plugin, w.series)
        return _clip(missing, max(w.start, listing or w.start), w.safe_end)
