"""The data sources the orchestrator chains: cache, stored aggregates, the provider, and writes.

Each wraps one dependency and translates its failures: cache and database failures surface as
``DataSourceError`` (the orchestrator skips the source and degrades); provider failures are the
plugins' own ``PluginError`` classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from core.errors import DataSourceError
from core.metrics import observe_query
from core.ports import Database
from core.timeframes import MINUTE_MS, Bar, tf_ms
from core.types import Series
from plugins.base import Capabilities
from services import aggregates, storage
from services.cache_manager import Cache
from services.market_service import MarketService

log = logging.getLogger(__name__)


class CacheSource:
    """Answer and 1m-bar cache; every failure is logged and reads as a miss."""

    name = "cache"

    def __init__(self, cache: Cache | None) -> None:
        self.cache = cache

    async def get_answer(self, key: str) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        try:
            return await self.cache.get_resampled(key)
        except DataSourceError as exc:
            log.warning("cache read skipped: %s", exc.details)
            return None

    async def put_answer(self, key: str, answer: dict[str, Any], ttl: int) -> None:
        if self.cache is None:
            return
        try:
            await self.cache.set_resampled(key, answer, ttl)
        except DataSourceError as exc:
            log.warning("cache write skipped: %s", exc.details)

    async def get_1m(self, series: Series, start: int, end: int) -> list[Bar]:
        if self.cache is None:
            return []
        try:
            return await self.cache.get_1m_bars(series, start, end)
        except DataSourceError as exc:
            log.warning("1m cache read skipped: %s", exc.details)
            return []

    async def put_1m(self, series: Series, bars: Sequence[Sequence[float]]) -> None:
        if self.cache is None or not bars:
            return
        try:
            await self.cache.store_1m_bars(series, bars)
        except DataSourceError as exc:
            log.warning("1m cache write skipped: %s", exc.details)


class AggregateSource:
    """Bars of any timeframe from storage, and the ledger's view of what is missing."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def name_for(self, timeframe: str) -> str:
        """``aggregate`` when a continuous aggregate answers (directly or regrouped), else
        ``database`` (the 1m table)."""
        if self.db.mode not in aggregates.MODES:
            return "database"
        relation, _ = aggregates.source_of(self.db.mode, timeframe)
        return "database" if relation == "ohlcv_1m" else "aggregate"

    async def missing(self, series: Series, start: int, end: int) -> list[tuple[int, int]]:
        async with self.db.acquire() as conn:
            with observe_query("missing_ranges"):
                return await storage.missing_ranges(conn, series, start, end)

    async def read(self, series: Series, timeframe: str, start: int, end: int, limit: int) -> list[Bar]:
        if end <= start:
            return []
        async with self.db.acquire() as conn:
            with observe_query("select_bars"):
                return await aggregates.select_bars(
                    conn, self.db.mode, series.market, series.provider, series.symbol,
                    timeframe, start, end, limit,
                )


class DbSource:
    """Writes fetched closed 1m bars (and the ranges now known complete) atomically."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def write(
        self, series: Series, bars: Sequence[Sequence[float]], complete: Sequence[tuple[int, int]]
    ) -> int:
        if not bars and not complete:
            return 0
        async with self.db.acquire() as conn:
            with observe_query("upsert_1m_bars"):
                n = await storage.upsert_1m_bars(conn, series, bars, complete)
            if bars:
                with observe_query("refresh_aggregates"):
                    await aggregates.refresh_window(
                        conn, self.db.mode, int(bars[0][0]), int(bars[-1][0]) + MINUTE_MS
                    )
        return n


class PluginSource:
    """Pages through a provider within its per-call limit and a budget of calls."""

    name = "provider"

    def __init__(self, markets: MarketService) -> None:
        self.markets = markets

    async def capabilities(self, series: Series) -> Capabilities:
        """The provider's capabilities (per-call limit, native timeframes, history depth, ...)."""
        plugin = await self.markets.get_plugin(series.market, series.provider)
        return plugin.capabilities

    async def calls_needed(self, series: Series, timeframe: str, ranges: Sequence[tuple[int, int]]) -> int:
        per_call, size = (await self.capabilities(series)).max_bars_per_call, tf_ms(timeframe)
        return sum(math.ceil((b - a) / size / per_call) for a, b in ranges)

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
