"""Alpaca market data v2 subset (stocks) and the trading API's ``/v2/assets``.

Real Alpaca serves data from ``data.alpaca.markets`` and assets from ``api.alpaca.markets``; with
one base URL override both land here. Bars follow the documented shape (``t`` RFC-3339, ``o h l c
v n vw``) with ``next_page_token`` paging. Simplifications: bars exist only in weekday sessions
14:30-21:00 UTC (see ``candles``), and ``1Day``/``1Week`` bars are stamped at UTC midnight (real
Alpaca stamps them at New York midnight). ``adjustment`` is validated, not applied.

Accounts (``AlpacaRoutes.accounts``, empty by default: any key or none is accepted): key id to
(secret key, plan feed). With accounts set, a request needs a known key pair (else 401, as Alpaca
answers), ``feed`` defaults to the account's plan (``sip`` for a paid plan, else ``iex``, as
Alpaca's docs say) and asking ``sip`` on an ``iex`` plan is a 403. A ``sip`` answer holds the
consolidated tape: volumes ``SIP_VOLUME_FACTOR`` times the IEX ones and a tighter quote.
``seen_keys`` records the key id of every ``/v2/`` request (None when none was sent).
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .candles import DAY, HOUR, MIN, WEEK, Candle, CandleBook

ASSETS: dict[str, str] = {"AAPL": "Apple Inc.", "MSFT": "Microsoft Corporation",
                          "SPY": "SPDR S&P 500 ETF Trust", "TSLA": "Tesla, Inc.",
                          "NVDA": "NVIDIA Corporation"}
FEEDS = ("iex", "sip", "otc", "delayed_sip")
ADJUSTMENTS = ("raw", "split", "dividend", "all")
MAX_LIMIT, DEFAULT_LIMIT = 10_000, 1000
SIP_VOLUME_FACTOR = 10
#: The feed a request is answered from (set by ``AlpacaRoutes._account``).
FEED = web.RequestKey("feed", str)
_TF = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W)$")
_UNITS = {"Min": (MIN, 59), "T": (MIN, 59), "Hour": (HOUR, 23), "H": (HOUR, 23),
          "Day": (DAY, 1), "D": (DAY, 1), "Week": (WEEK, 1), "W": (WEEK, 1)}


def error(status: int, message: str, code: int | None = None) -> web.Response:
    return web.json_response({"code": code or status * 100_000, "message": message},
                             status=status)


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: str) -> int:
    """RFC-3339 timestamp or ``YYYY-MM-DD`` date to ms (ValueError when neither)."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        raw += "T00:00:00Z"
    dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("timestamp needs a zone")
    return int(dt.timestamp() * 1000)


def parse_timeframe(raw: str) -> int:
    m = _TF.match(raw)
    if not m:
        raise ValueError(f"invalid timeframe: {raw}")
    unit, top = _UNITS[m.group(2)]
    n = int(m.group(1))
    if not 1 <= n <= top:
        raise ValueError(f"invalid timeframe: {raw}")
    return n * unit


def bar_json(c: Candle, feed: str = "iex") -> dict[str, Any]:
    ts, o, h, low, close, v = c
    v = v * SIP_VOLUME_FACTOR if feed == "sip" else v
    return {"t": rfc3339(ts), "o": o, "h": h, "l": low, "c": close, "v": round(v * 100),
            "n": int(v) + 1, "vw": round((o + close) / 2, 4)}


def _token(symbol: str, ts: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([symbol, ts]).encode()).decode()


def _untoken(token: str) -> tuple[str, int]:
    symbol, ts = json.loads(base64.urlsafe_b64decode(token.encode()))
    return str(symbol), int(ts)


class AlpacaRoutes:
    """Handlers bound to one emulator's candle book."""

    def __init__(self, book: CandleBook) -> None:
        self.book = book
        #: Largest page the emulator answers; tests lower it to exercise ``page_token``.
        self.page_size = MAX_LIMIT
        #: Key id -> (secret key, plan feed); empty: no key is checked (see the module doc).
        self.accounts: dict[str, tuple[str, str]] = {}
        #: Key id of each ``/v2/`` request, in order (None: sent without a key).
        self.seen_keys: list[str | None] = []

    @web.middleware
    async def _account(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/v2/"):
            return await handler(request)
        key_id = request.headers.get("APCA-API-KEY-ID")
        self.seen_keys.append(key_id)
        feed = request.query.get("feed")
        if self.accounts:
            account = self.accounts.get(key_id or "")
            if account is None or account[0] != request.headers.get("APCA-API-SECRET-KEY"):
                return web.json_response({"message": "unauthorized."}, status=401)
            if feed == "sip" and account[1] != "sip":
                return error(403, "subscription does not permit querying recent SIP data")
            feed = feed or account[1]
        request[FEED] = feed or "iex"
        return await handler(request)

    def register(self, app: web.Application) -> None:
        app.middlewares.append(self._account)
        r = app.router
        r.add_get("/v2/assets", self.assets)
        r.add_get("/v2/stocks/bars", self.multi_bars)
        r.add_get("/v2/stocks/{symbol}/bars", self.bars)
        r.add_get("/v2/stocks/{symbol}/bars/latest", self.latest_bar)
        r.add_get("/v2/stocks/{symbol}/quotes/latest", self.latest_quote)
        r.add_get("/v2/stocks/{symbol}/trades/latest", self.latest_trade)
        r.add_get("/v2/stocks/{symbol}/snapshot", self.snapshot)

    async def assets(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"id": f"00000000-0000-0000-0000-{i:012d}", "class": "us_equity", "exchange": "NASDAQ",
             "symbol": s, "name": name, "status": "active", "tradable": True, "marginable": True,
             "shortable": True, "easy_to_borrow": True, "fractionable": True}
            for i, (s, name) in enumerate(ASSETS.items())])

    def _range(
        self, request: web.Request
    ) -> tuple[int, int, int, int, str | None] | web.Response:
        """(size, start, end, limit, page token) from the query, or a 400/422 answer."""
        q = request.query
        if q.get("feed", "iex") not in FEEDS:
            return error(422, f"invalid feed: {q['feed']}")
        if q.get("adjustment", "raw") not in ADJUSTMENTS:
            return error(422, f"invalid adjustment: {q['adjustment']}")
        try:
            size = parse_timeframe(q.get("timeframe", ""))
            now = self.book.now()
            start = parse_time(q["start"]) if "start" in q else now - now % DAY
            end = parse_time(q["end"]) if "end" in q else now
            limit = int(q.get("limit", DEFAULT_LIMIT))
        except (ValueError, KeyError) as exc:
            return error(422, str(exc) or "invalid parameter")
        if not 1 <= limit <= MAX_LIMIT:
            return error(422, "invalid limit: must be between 1 and 10000")
        if start > end:
            return error(422, "end should not be before start")
        return size, start, end, limit, q.get("page_token")

    def _page(
        self, symbol: str, size: int, start: int, end: int, limit: int
    ) -> tuple[list[Candle], int | None]:
        """Bars of [start, end] (inclusive, as Alpaca) and the start of the next page, if any."""
        take = min(limit, self.page_size)
        candles = self.book.candles(symbol, True, size, start, end, take + 1)
        if len(candles) > take:
            return candles[:take], candles[take][0]
        return candles, None

    async def bars(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        rng = self._range(request)
        if isinstance(rng, web.Response):
            return rng
        size, start, end, limit, token = rng
        if token:
            try:
                tok_symbol, start = _untoken(token)
            except (ValueError, TypeError) as exc:
                return error(400, f"invalid page_token: {exc}")
            if tok_symbol != symbol:
                return error(400, "invalid page_token")
        if symbol not in ASSETS:
            return web.json_response({"bars": None, "symbol": symbol, "next_page_token": None})
        candles, nxt = self._page(symbol, size, start, end, limit)
        return web.json_response({
            "bars": [bar_json(c, request[FEED]) for c in candles] or None, "symbol": symbol,
            "next_page_token": _token(symbol, nxt) if nxt is not None else None})

    async def multi_bars(self, request: web.Request) -> web.Response:
        symbols = [s for s in request.query.get("symbols", "").split(",") if s]
        if not symbols:
            return error(400, "symbols is required")
        rng = self._range(request)
        if isinstance(rng, web.Response):
            return rng
        size, start, end, limit, token = rng
        first, resume = symbols[0], start
        if token:
            try:
                first, resume = _untoken(token)
            except (ValueError, TypeError) as exc:
                return error(400, f"invalid page_token: {exc}")
        out: dict[str, list[dict[str, Any]]] = {}
        pending = sorted(s for s in symbols if s in ASSETS and s >= first)
        nxt_token: str | None = None
        for i, symbol in enumerate(pending):
            candles, nxt = self._page(symbol, size, resume if i == 0 else start, end, limit)
            limit -= len(candles)
            if candles:
                out[symbol] = [bar_json(c, request[FEED]) for c in candles]
            if nxt is not None:
                nxt_token = _token(symbol, nxt)
                break
            if limit <= 0:
                if i + 1 < len(pending):
                    nxt_token = _token(pending[i + 1], start)
                break
        return web.json_response({"bars": out, "next_page_token": nxt_token})

    def _latest(self, symbol: str) -> Candle | None:
        candles = self.book.candles(symbol, True, MIN, None, None, 1)
        return candles[-1] if candles else None

    async def latest_bar(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        c = self._latest(symbol) if symbol in ASSETS else None
        if c is None:
            return error(404, f"no bar found for {symbol}", 40410000)
        return web.json_response({"symbol": symbol, "bar": bar_json(c, request[FEED])})

    def _quote(self, c: Candle, feed: str = "iex") -> dict[str, Any]:
        # The national best bid/offer (sip) is tighter than IEX's own quote.
        spread, digits = (0.00005, 4) if feed == "sip" else (0.0002, 2)
        return {"t": rfc3339(c[0] + 59_000), "ax": "V", "ap": round(c[4] * (1 + spread), digits),
                "as": 3, "bx": "V", "bp": round(c[4] * (1 - spread), digits), "bs": 2, "c": ["R"],
                "z": "C"}

    def _trade(self, c: Candle) -> dict[str, Any]:
        return {"t": rfc3339(c[0] + 59_000), "x": "V", "p": c[4], "s": 100, "c": ["@"],
                "i": c[0] // MIN, "z": "C"}

    async def latest_quote(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        c = self._latest(symbol) if symbol in ASSETS else None
        if c is None:
            return error(404, f"no quote found for {symbol}", 40410000)
        return web.json_response({"symbol": symbol, "quote": self._quote(c, request[FEED])})

    async def latest_trade(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        c = self._latest(symbol) if symbol in ASSETS else None
        if c is None:
            return error(404, f"no trade found for {symbol}", 40410000)
        return web.json_response({"symbol": symbol, "trade": self._trade(c)})

    async def snapshot(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        c = self._latest(symbol) if symbol in ASSETS else None
        if c is None:
            return error(404, f"no snapshot found for {symbol}", 40410000)
        day = self.book.candles(symbol, True, DAY, None, None, 2)
        return web.json_response({
            "symbol": symbol, "latestTrade": self._trade(c),
            "latestQuote": self._quote(c, request[FEED]), "minuteBar": bar_json(c, request[FEED]),
            "dailyBar": bar_json(day[-1], request[FEED]) if day else None,
            "prevDailyBar": bar_json(day[-2], request[FEED]) if len(day) > 1 else None})
