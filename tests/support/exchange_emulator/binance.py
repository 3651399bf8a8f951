"""Binance spot REST subset that CCXT's ``binance`` uses for public market data.

Paths and bodies follow https://developers.binance.com (spot ``/api/v3``); the USD-M and COIN-M
futures ``exchangeInfo`` answer with no symbols so CCXT's ``load_markets`` works when it asks for
every market type. Errors use Binance's ``{"code": -11xx, "msg": ...}`` bodies.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .candles import DAY, HOUR, MIN, WEEK, Candle, CandleBook

#: Spot symbols served: exchange id -> (base, quote)
SYMBOLS: dict[str, tuple[str, str]] = {
    "BTCUSDT": ("BTC", "USDT"), "ETHUSDT": ("ETH", "USDT"), "SOLUSDT": ("SOL", "USDT"),
    "BNBUSDT": ("BNB", "USDT"), "ETHBTC": ("ETH", "BTC"),
}
INTERVALS: dict[str, int] = {
    "1m": MIN, "3m": 3 * MIN, "5m": 5 * MIN, "15m": 15 * MIN, "30m": 30 * MIN, "1h": HOUR,
    "2h": 2 * HOUR, "4h": 4 * HOUR, "6h": 6 * HOUR, "8h": 8 * HOUR, "12h": 12 * HOUR, "1d": DAY,
    "3d": 3 * DAY, "1w": WEEK,
}
MAX_LIMIT, DEFAULT_LIMIT = 1000, 500


def error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


def _num(x: float) -> str:
    return f"{x:.8f}"


def kline_row(c: Candle, size: int) -> list[Any]:
    """A Binance kline array: open time, OHLCV as strings, close time and the extra columns."""
    ts, o, h, low, close, v = c
    return [ts, _num(o), _num(h), _num(low), _num(close), _num(v), ts + size - 1,
            _num(v * (o + close) / 2), 100 + ts // MIN % 900, _num(v / 2),
            _num(v * (o + close) / 4), "0"]


def _symbol_info(symbol: str, base: str, quote: str) -> dict[str, Any]:
    tick = "0.01000000" if quote != "BTC" else "0.00000100"
    return {
        "symbol": symbol, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
        "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000",
             "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
             "stepSize": "0.00001000"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode":
        "EXPIRE_MAKER", "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER"],
    }


class BinanceRoutes:
    """Handlers bound to one emulator's candle book."""

    def __init__(self, book: CandleBook) -> None:
        self.book = book
        #: Symbols served (``add_symbols`` grows it for benches that need many markets).
        self.symbols: dict[str, tuple[str, str]] = dict(SYMBOLS)

    def add_symbols(self, count: int) -> list[str]:
        """Serve ``count`` more USDT pairs (``X001USDT``...); returns their ids."""
        start = sum(1 for s in self.symbols if s.startswith("X"))
        added = [f"X{i:03d}USDT" for i in range(start + 1, start + count + 1)]
        self.symbols.update((s, (s[:-4], "USDT")) for s in added)
        return added

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v3/ping", self.ping)
        r.add_get("/api/v3/time", self.server_time)
        r.add_get("/api/v3/exchangeInfo", self.exchange_info)
        r.add_get("/api/v3/klines", self.klines)
        r.add_get("/api/v3/ticker/24hr", self.ticker_24hr)
        r.add_get("/api/v3/ticker/bookTicker", self.book_ticker)
        r.add_get("/fapi/v1/exchangeInfo", self.futures_info)
        r.add_get("/dapi/v1/exchangeInfo", self.futures_info)

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def server_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.book.now()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "timezone": "UTC", "serverTime": self.book.now(), "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": 6000}],
            "exchangeFilters": [],
            "symbols": [_symbol_info(s, b, q) for s, (b, q) in self.symbols.items()],
        })

    async def futures_info(self, request: web.Request) -> web.Response:
        return web.json_response({"timezone": "UTC", "serverTime": self.book.now(),
                                  "rateLimits": [], "exchangeFilters": [], "assets": [],
                                  "symbols": []})

    def _symbol(self, request: web.Request) -> str | web.Response:
        symbol = request.query.get("symbol", "")
        if not symbol:
            return error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null,"
                         " or malformed.")
        if symbol not in self.symbols:
            return error(400, -1121, "Invalid symbol.")
        return symbol

    async def klines(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request)
        if isinstance(symbol, web.Response):
            return symbol
        q = request.query
        size = INTERVALS.get(q.get("interval", ""))
        if size is None:
            return error(400, -1120, "Invalid interval.")
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= MAX_LIMIT:
            return error(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            return error(400, -1023, "Start time is greater than end time.")
        candles = self.book.candles(symbol, False, size, start, end, limit)
        return web.json_response([kline_row(c, size) for c in candles])

    def _last_day(self, symbol: str) -> tuple[Candle | None, Candle | None]:
        """(the current 1m candle, the rolling 24h aggregate) of ``symbol``."""
        now = self.book.now()
        minutes = self.book.candles(symbol, False, MIN, now - DAY + MIN, now, 1440)
        if not minutes:
            return None, None
        agg = (minutes[0][0], minutes[0][1], max(c[2] for c in minutes),
               min(c[3] for c in minutes), minutes[-1][4], sum(c[5] for c in minutes))
        return minutes[-1], agg

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request)
        if isinstance(symbol, web.Response):
            return symbol
        last, day = self._last_day(symbol)
        now = self.book.now()
        if last is None or day is None:
            return error(400, -1121, "Invalid symbol.")
        price = last[4]
        return web.json_response({
            "symbol": symbol, "priceChange": _num(price - day[1]),
            "priceChangePercent": f"{(price - day[1]) / day[1] * 100:.3f}",
            "weightedAvgPrice": _num((day[2] + day[3]) / 2), "prevClosePrice": _num(day[1]),
            "lastPrice": _num(price), "lastQty": "0.01000000",
            "bidPrice": _num(price * 0.9999), "bidQty": "1.00000000",
            "askPrice": _num(price * 1.0001), "askQty": "1.00000000",
            "openPrice": _num(day[1]), "highPrice": _num(day[2]), "lowPrice": _num(day[3]),
            "volume": _num(day[5]), "quoteVolume": _num(day[5] * price),
            "openTime": now - DAY, "closeTime": now, "firstId": 1, "lastId": 1000, "count": 1000,
        })

    async def book_ticker(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request)
        if isinstance(symbol, web.Response):
            return symbol
        last, _ = self._last_day(symbol)
        price = last[4] if last else 0.0
        return web.json_response({
            "symbol": symbol, "bidPrice": _num(price * 0.9999), "bidQty": "1.00000000",
            "askPrice": _num(price * 1.0001), "askQty": "1.00000000",
            "time": int(time.time() * 1000)})
