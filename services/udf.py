"""TradingView's UDF (``/udf``): symbol info, search and history over the same services as REST.

History is answered by the ``DataOrchestrator`` that answers ``/api/v1/ohlcv`` (same answer cache,
storage and provider path), so a chart plugged in through UDF costs the exchange nothing extra.
Symbol info comes from the provider's own statement of its price step (CCXT market precision,
cents for stocks, the sim's rounding) through ``MarketPlugin.symbol_meta``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from core.errors import InvalidParameter, UnknownProvider, UnknownSymbol
from core.timeframes import Bar, tf_ms
from core.types import Series
from services.bars.orchestrator import BarQuery, DataOrchestrator
from services.upstream.market_service import MarketService

log = logging.getLogger(__name__)

#: UDF resolution -> our timeframe (``D`` and ``W`` are accepted spellings of ``1D`` and ``1W``).
RESOLUTIONS: dict[str, str] = {
    "1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "120": "2h",
    "240": "4h", "360": "6h", "720": "12h", "1D": "1d", "1W": "1w", "D": "1d", "W": "1w",
}
#: Months (``M`` is an accepted spelling of ``1M``): UTC calendar months, aggregated here from 1d
#: bars as TradingView builds them (open of the first day, max high, min low, close of the last,
#: sum of volume); ``t`` is the month's first day, 00:00 UTC.
MONTHLY = ("1M", "M")
SUPPORTED_RESOLUTIONS = ["1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "1D", "1W", "1M"]
INTRADAY_MULTIPLIERS = SUPPORTED_RESOLUTIONS[:10]
#: Most months one history request answers (50 years: at most four pages of 1d bars).
MAX_MONTHS = 600


@dataclass(frozen=True)
class MarketStyle:
    """How TradingView should present a market's symbols."""

    type: str
    session: str
    timezone: str


#: Crypto and the sim trade around the clock (UTC); US stocks in the regular New York session.
MARKET_STYLES: dict[str, MarketStyle] = {
    "crypto": MarketStyle("crypto", "24x7", "Etc/UTC"),
    "sim": MarketStyle("crypto", "24x7", "Etc/UTC"),
    "stocks": MarketStyle("stock", "0930-1600", "America/New_York"),
}
DEFAULT_STYLE = MarketStyle("crypto", "24x7", "Etc/UTC")
#: Decimals used when a provider states no price step (CCXT's SIGNIFICANT_DIGITS mode).
FALLBACK_DECIMALS = 8
#: Bars looked back for ``nextTime`` when a range holds none.
NEXT_TIME_LOOKBACK = 100


def price_scale(tick: float | None) -> tuple[int, int]:
    """(pricescale, minmov) for a price step: 0.01 -> (100, 1), 0.5 -> (10, 5), 5 -> (1, 5)."""
    step = _decimal(tick)
    if step is None:
        return 10 ** FALLBACK_DECIMALS, 1
    decimals = max(0, -step.as_tuple().exponent)  # type: ignore[operator]
    scale = 10 ** decimals
    return scale, max(1, int(step * scale))


def step_decimals(tick: float | None) -> int:
    """Decimals of a volume step: 1 -> 0, 0.00001 -> 5 (FALLBACK_DECIMALS when unknown)."""
    step = _decimal(tick)
    return FALLBACK_DECIMALS if step is None else max(0, -step.as_tuple().exponent)  # type: ignore[operator]


def month_start(ms: int) -> int:
    """The first millisecond of the UTC calendar month holding ``ms``."""
    day = datetime.fromtimestamp(ms / 1000, UTC)
    return int(datetime(day.year, day.month, 1, tzinfo=UTC).timestamp() * 1000)


def add_months(ms: int, months: int) -> int:
    """The start of the month ``months`` after (before, when negative) the month holding ``ms``."""
    day = datetime.fromtimestamp(ms / 1000, UTC)
    year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
    return int(datetime(year, month + 1, 1, tzinfo=UTC).timestamp() * 1000)


def monthly(days: list[Bar]) -> list[Bar]:
    """Ascending 1d bars as calendar-month bars (a month without a day bar has no bar)."""
    out: list[Bar] = []
    for bar in days:
        start = month_start(int(bar[0]))
        if out and out[-1][0] == start:
            last = out[-1]
            last[2], last[3] = max(last[2], bar[2]), min(last[3], bar[3])
            last[4], last[5] = bar[4], last[5] + bar[5]
        else:
            out.append([start, *bar[1:6]])
    return out


def _decimal(tick: float | None) -> Decimal | None:
    if tick is None or not 0 < tick < math.inf:
        return None
    try:
        return Decimal(repr(float(tick))).normalize()
    except (InvalidOperation, ValueError):
        return None


class UdfService:
    """Answers of the UDF endpoints; collaborators are the REST path's own services."""

    def __init__(self, markets: MarketService, orchestrator: DataOrchestrator, max_bars: int,
                 search_seconds: float) -> None:
        """``max_bars``: ``OHLCV_MAX_LIMIT``; ``search_seconds``: ``UDF_SEARCH_SECONDS``."""
        self.markets = markets
        self.orchestrator = orchestrator
        self.max_bars = max_bars
        self.search_seconds = search_seconds
        #: Symbol-list fetches started by searches, one per (market, provider); one that outlasts
        #: its search goes on (bounded by REQUEST_DEADLINE) and fills the cache for the next.
        self._fetching: dict[tuple[str, str], asyncio.Task[list[str]]] = {}

    async def close(self) -> None:
        """Cancel the symbol-list fetches still running (at shutdown)."""
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- Catalogue -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The datafeed configuration (``onReady``'s data plus UDF's two request-mode flags)."""
        exchanges = [{"value": "", "name": "All Exchanges", "desc": ""}]
        types: dict[str, str] = {}
        for entry in self.markets.markets():
            style = MARKET_STYLES.get(entry["market"], DEFAULT_STYLE)
            types[style.type] = style.type.capitalize()
            for provider in entry["providers"]:
                exchanges.append({"value": provider.upper(), "name": provider.upper(),
                                  "desc": f"{provider} ({entry['market']})"})
        return {
            "supported_resolutions": SUPPORTED_RESOLUTIONS,
            "supports_search": True,
            "supports_group_request": False,
            "supports_marks": False,
            "supports_timescale_marks": False,
            "supports_time": True,
            "exchanges": exchanges,
            "symbols_types": [{"name": "All types", "value": ""}]
            + [{"name": name, "value": value} for value, name in sorted(types.items())],
        }

    def resolve(self, ticker: str) -> Series:
        """``PROVIDER:SYMBOL`` as a series (the market follows from the provider); raises
        ``InvalidParameter`` for another shape and ``UnknownProvider`` for an unknown provider."""
        provider, sep, symbol = ticker.partition(":")
        if not sep or not provider or not symbol:
            raise InvalidParameter("symbol must be PROVIDER:SYMBOL, e.g. SIM:SIM/USD",
                                   details={"symbol": ["must be PROVIDER:SYMBOL"]})
        wanted = provider.lower()
        for entry in self.markets.markets():
            if wanted in entry["providers"]:
                return Series(entry["market"], wanted, symbol)
        raise UnknownProvider(f"unknown provider {provider!r}")

    async def symbol_info(self, ticker: str) -> dict[str, Any]:
        """TradingView's SymbolInfo for ``PROVIDER:SYMBOL``; raises ``UnknownSymbol``."""
        series = self.resolve(ticker)
        if series.symbol not in await self.markets.symbols(series.market, series.provider):
            raise UnknownSymbol(f"unknown symbol {series.symbol!r} for provider {series.provider}")
        plugin = await self.markets.get_plugin(series.market, series.provider)
        # No upstream call: CCXT's markets were loaded by ``symbols`` just above (same TTL).
        meta = await plugin.symbol_meta(series.symbol)
        style = MARKET_STYLES.get(series.market, DEFAULT_STYLE)
        pricescale, minmov = price_scale(meta.price_tick)
        exchange = series.provider.upper()
        return {
            "name": series.symbol, "ticker": f"{exchange}:{series.symbol}",
            "description": meta.description or series.symbol, "type": style.type,
            "exchange": exchange, "listed_exchange": exchange, "session": style.session,
            "timezone": style.timezone, "format": "price", "minmov": minmov, "pricescale": pricescale,
            "has_intraday": True, "intraday_multipliers": INTRADAY_MULTIPLIERS, "has_daily": True,
            "has_weekly_and_monthly": True, "supported_resolutions": SUPPORTED_RESOLUTIONS,
            "volume_precision": step_decimals(meta.volume_tick), "data_status": "streaming",
        }

    async def search(self, query: str, type_: str, exchange: str, limit: int) -> list[dict[str, Any]]:
        """Symbols whose name holds ``query`` (case-insensitive), by provider.

        One exchange asked: its list, or its error. Every exchange (TradingView's default): the
        lists are fetched at once and the answer comes within ``search_seconds`` with what is known
        by then; a provider that has not answered (unreachable, slow to load its markets) counts
        with the last list it gave, if any, and its fetch goes on for the next search."""
        needle = query.upper()
        wanted: list[tuple[str, str, MarketStyle]] = []
        for entry in self.markets.markets():
            style = MARKET_STYLES.get(entry["market"], DEFAULT_STYLE)
            if type_ and type_ != style.type:
                continue
            wanted += [(entry["market"], info.provider, style) for info in self.markets.providers(entry["market"])
                       if info.configured and (not exchange or exchange.upper() == info.provider.upper())]
        if exchange:
            lists = [await self.markets.symbols(market, provider) for market, provider, _ in wanted]
        else:
            lists = await self._symbol_lists([(market, provider) for market, provider, _ in wanted])
        found: list[dict[str, Any]] = []
        for (_, provider, style), symbols in zip(wanted, lists, strict=True):
            name = provider.upper()
            found += [{"symbol": s, "full_name": f"{name}:{s}", "description": s,
                       "exchange": name, "ticker": f"{name}:{s}", "type": style.type}
                      for s in symbols if needle in s.upper()]
            if len(found) >= limit:
                return found[:limit]
        return found

    async def _symbol_lists(self, wanted: list[tuple[str, str]]) -> list[list[str]]:
        """Each (market, provider)'s symbols as known after at most ``search_seconds``."""
        tasks = [self._fetch_symbols(market, provider) for market, provider in wanted]
        if tasks:
            await asyncio.wait(tasks, timeout=self.search_seconds)  # the rest keep running
        lists = []
        for (market, provider), task in zip(wanted, tasks, strict=True):
            if task.done() and not task.cancelled() and task.exception() is None:
                lists.append(task.result())
                continue
            known = self.markets.known_symbols(market, provider)
            why = "not answered yet" if not task.done() else f"failed: {task.exception() or 'cancelled'}"
            log.debug("udf search: %s %s, %s", provider, why,
                      f"its last list ({len(known)} symbols) used" if known else "left out")
            lists.append(known or [])
        return lists

    def _fetch_symbols(self, market: str, provider: str) -> asyncio.Task[list[str]]:
        """The running fetch of a provider's symbol list, or a new one."""
        key = (market, provider)
        task = self._fetching.get(key)
        if task is None:
            task = asyncio.create_task(self.markets.symbols(market, provider), name=f"udf-symbols-{provider}")
            self._fetching[key] = task
            task.add_done_callback(lambda done: self._fetched(key, done))
        return task

    def _fetched(self, key: tuple[str, str], task: asyncio.Task[list[str]]) -> None:
        if self._fetching.get(key) is task:
            del self._fetching[key]
        if not task.cancelled() and task.exception() is not None:  # retrieved: said by search
            log.debug("udf search: symbols of %s failed: %s", key[1], task.exception())

    # --- History -------------------------------------------------------------------------------
    async def history(
        self, ticker: str, resolution: str, start_s: int | None, to_s: int, countback: int | None
    ) -> dict[str, Any]:
        """Bars with ``t < to``: the latest ``countback`` of them when given (it wins over
        ``from``), else those with ``t >= from``, the latest ``max_bars`` when the range holds
        more. Times in seconds. ``no_data`` carries ``nextTime``, the latest bar before the range,
        when there is one."""
        series = self.resolve(ticker)
        self.markets.check_provider(series.market, series.provider)
        if resolution in MONTHLY:
            return await self._monthly_history(series, start_s, to_s, countback)
        tf = RESOLUTIONS[resolution]
        size, end = tf_ms(tf), to_s * 1000
        if countback is not None:
            query = BarQuery(series, tf, None, end, min(countback, self.max_bars))
            first = end - query.limit * size
        else:
            assert start_s is not None
            first = start_s * 1000
            whole = -(-(end - first) // size) <= self.max_bars
            query = BarQuery(series, tf, first if whole else None, end, self.max_bars)
        answer = await self.orchestrator.get_bars(query)
        bars = answer.bars if countback is not None else [b for b in answer.bars if b[0] >= first]
        if bars:
            return _columns(bars)
        before = await self.orchestrator.get_bars(BarQuery(series, tf, None, first, NEXT_TIME_LOOKBACK))
        out: dict[str, Any] = {"s": "no_data"}
        earlier = [b for b in before.bars if b[0] < first]
        if earlier:
            out["nextTime"] = int(earlier[-1][0]) // 1000
        return out

    async def _monthly_history(
        self, series: Series, start_s: int | None, to_s: int, countback: int | None
    ) -> dict[str, Any]:
        """``history`` in calendar months (``1M``), from the 1d bars of the months asked."""
        end = to_s * 1000
        last = month_start(end - 1)  # the latest month starting before `to`
        if countback is not None:
            first = add_months(last, -(min(countback, MAX_MONTHS) - 1))
        else:
            assert start_s is not None
            first = month_start(start_s * 1000)
            if first < start_s * 1000:
                first = add_months(first, 1)  # months starting at or after `from`
            first = max(first, add_months(last, -(MAX_MONTHS - 1)))  # the latest MAX_MONTHS
        bars = monthly(await self._days(series, first, add_months(last, 1))) if first <= last else []
        if bars:
            return _columns(bars)
        before = await self.orchestrator.get_bars(BarQuery(series, "1d", None, first, NEXT_TIME_LOOKBACK))
        out: dict[str, Any] = {"s": "no_data"}
        if before.bars:
            out["nextTime"] = month_start(int(before.bars[-1][0])) // 1000
        return out

    async def _days(self, series: Series, start: int, end: int) -> list[Bar]:
        """Every 1d bar of ``[start, end)``, page after page."""
        days: list[Bar] = []
        cursor: int | None = start
        while cursor is not None and cursor < end:
            answer = await self.orchestrator.get_bars(BarQuery(series, "1d", cursor, end, self.max_bars))
            days += [b for b in answer.bars if cursor <= b[0] < end]
            cursor = answer.next if answer.next is not None and answer.next > cursor else None
        return days

    @staticmethod
    def server_time() -> int:
        """The server's clock in whole seconds."""
        return int(time.time())


def _columns(bars: list[Bar]) -> dict[str, Any]:
    """UDF's ``ok`` answer: one array per column, times in seconds."""
    return {"s": "ok", "t": [int(b[0]) // 1000 for b in bars], "o": [b[1] for b in bars],
            "h": [b[2] for b in bars], "l": [b[3] for b in bars], "c": [b[4] for b in bars],
            "v": [b[5] for b in bars]}
