"""TradingView's UDF (``/udf``): symbol info, search and history over the same services as REST.

History is answered by the ``DataOrchestrator`` that answers ``/api/v1/ohlcv`` (same answer cache,
storage and provider path), so a chart plugged in through UDF costs the exchange nothing extra.
Symbol info comes from the provider's own statement of its price step (CCXT market precision,
cents for stocks, the sim's rounding) through ``MarketPlugin.symbol_meta``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from core.errors import InvalidParameter, PluginError, UnknownProvider, UnknownSymbol
from core.timeframes import tf_ms
from core.types import Series
from services.market_service import MarketService
from services.orchestrator import BarQuery, DataOrchestrator

log = logging.getLogger(__name__)

#: UDF resolution -> our timeframe (``D`` and ``W`` are accepted spellings of ``1D`` and ``1W``).
RESOLUTIONS: dict[str, str] = {
    "1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "120": "2h",
    "240": "4h", "360": "6h", "720": "12h", "1D": "1d", "1W": "1w", "D": "1d", "W": "1w",
}
SUPPORTED_RESOLUTIONS = ["1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "1D", "1W"]
INTRADAY_MULTIPLIERS = SUPPORTED_RESOLUTIONS[:10]


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


def _decimal(tick: float | None) -> Decimal | None:
    if tick is None or not 0 < tick < math.inf:
        return None
    try:
        return Decimal(repr(float(tick))).normalize()
    except (InvalidOperation, ValueError):
        return None


class UdfService:
    """Answers of the UDF endpoints; collaborators are the REST path's own services."""

    def __init__(self, markets: MarketService, orchestrator: DataOrchestrator, max_bars: int = 5000) -> None:
        self.markets = markets
        self.orchestrator = orchestrator
        self.max_bars = max_bars

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
        """Symbols whose name holds ``query`` (case-insensitive), by provider; a provider that
        cannot list its symbols now is left out (logged), unless it was the only one asked."""
        needle, found = query.upper(), []
        for entry in self.markets.markets():
            style = MARKET_STYLES.get(entry["market"], DEFAULT_STYLE)
            if type_ and type_ != style.type:
                continue
            for info in self.markets.providers(entry["market"]):
                name = info.provider.upper()
                if (exchange and exchange.upper() != name) or not info.configured:
                    continue
                try:
                    symbols = await self.markets.symbols(entry["market"], info.provider)
                except PluginError as exc:
                    if exchange:
                        raise
                    log.warning("udf search: %s left out: %s", info.provider, exc)
                    continue
                found += [{"symbol": s, "full_name": f"{name}:{s}", "description": s,
                           "exchange": name, "ticker": f"{name}:{s}", "type": style.type}
                          for s in symbols if needle in s.upper()]
                if len(found) >= limit:
                    return found[:limit]
        return found

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
            return {"s": "ok", "t": [int(b[0]) // 1000 for b in bars], "o": [b[1] for b in bars],
                    "h": [b[2] for b in bars], "l": [b[3] for b in bars], "c": [b[4] for b in bars],
                    "v": [b[5] for b in bars]}
        before = await self.orchestrator.get_bars(BarQuery(series, tf, None, first, NEXT_TIME_LOOKBACK))
        out: dict[str, Any] = {"s": "no_data"}
        earlier = [b for b in before.bars if b[0] < first]
        if earlier:
            out["nextTime"] = int(earlier[-1][0]) // 1000
        return out

    @staticmethod
    def server_time() -> int:
        """The server's clock in whole seconds."""
        return int(time.time())
