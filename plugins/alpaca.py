"""AlpacaPlugin: US stocks from Alpaca's market data v2 REST API.

Bars come from ``GET /v2/stocks/{symbol}/bars`` on the data host, the ticker from the snapshot,
symbols from the trading API's ``/v2/assets``. A ``PROVIDER_URLS["alpaca"]`` base URL replaces both
hosts. One aiohttp session per instance, made lazily and closed in ``close()``. Stock bars exist
only in trading hours: Alpaca simply has none for nights, weekends and holidays, and none are
invented here. Alpaca stamps ``1Day``/``1Week`` bars at New York midnight; each bar's ``ts`` is
floored to our UTC bucket (a session never crosses UTC midnight, so the day is unchanged). Frames
whose Alpaca buckets would not line up with UTC buckets (2h, 4h, ...) are not served natively.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from core.errors import (
    AppError,
    AuthenticationPluginError,
    MalformedResponseError,
    NetworkPluginError,
    PluginError,
    PluginFeatureNotSupportedError,
    RateLimitedPluginError,
    UnknownSymbol,
)
from core.timeframes import Bar, bucket_start
from plugins.base import Capabilities, MarketPlugin, PluginSettings, ProviderInfo, SymbolMeta, Ticker
from plugins.retry import parse_retry_after

DATA_URL = "https://data.alpaca.markets"
TRADING_URL = "https://api.alpaca.markets"
PAPER_TRADING_URL = "https://paper-api.alpaca.markets"
#: Our timeframe -> Alpaca's; only frames whose buckets coincide with our UTC buckets.
TIMEFRAMES = {"1m": "1Min", "3m": "3Min", "5m": "5Min", "15m": "15Min", "30m": "30Min",
              "1h": "1Hour", "1d": "1Day", "1w": "1Week"}
MAX_PAGE = 10_000
CAPABILITIES = Capabilities(max_bars_per_call=MAX_PAGE, timeframes=tuple(TIMEFRAMES),
                            min_poll_interval=2.0, continuous=False)

# --- Wire formats: RFC-3339 timestamps and bar/number fields, parsed strictly (a value of the
# wrong type raises ``ValueError``, which the plugin reports as a malformed response).
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def rfc3339(ms: int) -> str:
    """Whole-second RFC-3339 UTC timestamp of ``ms`` (rounded down)."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(raw: Any) -> int:
    """Milliseconds of an Alpaca RFC-3339 timestamp (nanosecond fractions allowed)."""
    if not isinstance(raw, str):
        raise ValueError(f"timestamp is {type(raw).__name__}")
    dt = datetime.fromisoformat(_FRACTION.sub(r"\1", raw.replace("Z", "+00:00")))
    if dt.tzinfo is None:
        raise ValueError("timestamp without a zone")
    return int(dt.timestamp() * 1000)


def _num(x: Any) -> float:
    """``x`` as a float; a bool or a non-number raises ``ValueError``."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"not a number: {x!r}")
    return float(x)


def parse_bar(raw: Any, timeframe: str) -> Bar:
    """``{"t", "o", "h", "l", "c", "v"}`` to ``[ts, o, h, l, c, v]`` in our UTC bucket."""
    if not isinstance(raw, dict):
        raise ValueError("bar is not an object")
    ts = bucket_start(parse_ts(raw.get("t")), timeframe)
    return [ts, *(_num(raw.get(k)) for k in ("o", "h", "l", "c", "v"))]


def _positive(x: Any) -> float | None:
    """Alpaca reports an empty book side as 0."""
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and x > 0 else None


class AlpacaPlugin(MarketPlugin):
    """US stock bars, symbols and tickers from Alpaca."""

    plugin_key = "alpaca"
    supported_markets = ("stocks",)

    def __init__(self, provider_id: str, **kwargs: Any) -> None:
        super().__init__(provider_id, **kwargs)
        # A user's own key: no feed is sent, so Alpaca answers from the best feed that account's
        # subscription allows (sip with a paid plan, else iex), as its API documents.
        self.feed = None if self.user_instance else self.settings.alpaca_feed
        base = self.base_url.rstrip("/") if self.base_url else None
        self.data_url = base or DATA_URL
        self.trading_url = base or (PAPER_TRADING_URL if self.testnet else TRADING_URL)
        self._session: aiohttp.ClientSession | None = None
        self._symbols: tuple[float, frozenset[str]] | None = None
        self._lock = asyncio.Lock()

    # --- Configuration -------------------------------------------------------------------------
    @classmethod
    def list_configurable_providers(cls, settings: PluginSettings) -> list[ProviderInfo]:
        """``alpaca``: needs ``ALPACA_API_KEY_ID`` and ``ALPACA_API_SECRET_KEY``."""
        creds, _ = cls.settings_from_config("alpaca", settings)
        return [ProviderInfo(provider="alpaca", requires_credentials=True,
                             configured=bool(creds), timeframes=list(TIMEFRAMES))]

    @classmethod
    def missing_settings(cls, provider_id: str, settings: PluginSettings) -> list[str]:
        """Alpaca's data API needs a key: ``ALPACA_API_KEY_ID`` and ``ALPACA_API_SECRET_KEY``."""
        given = {"ALPACA_API_KEY_ID": settings.alpaca_key_id,
                 "ALPACA_API_SECRET_KEY": settings.alpaca_secret_key}
        return [name for name, value in given.items() if not value]

    @classmethod
    def settings_from_config(
        cls, provider_id: str, settings: PluginSettings
    ) -> tuple[dict[str, str], bool]:
        """API key id and secret from the settings; Alpaca's data API has no testnet."""
        key, secret = settings.alpaca_key_id, settings.alpaca_secret_key
        if key and secret:
            return {"key_id": key, "secret_key": secret}, False
        return {}, False

    @classmethod
    def credentials_from_user(
        cls, api_key: str, secret: str, password: str | None = None
    ) -> dict[str, str]:
        """Alpaca's key id and secret key (it has no passphrase)."""
        return {"key_id": api_key, "secret_key": secret}

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def _feed(self) -> dict[str, str]:
        return {"feed": self.feed} if self.feed else {}

    def _adjustment(self) -> dict[str, str]:
        adjustment = self.settings.alpaca_adjustment
        return {"adjustment": adjustment} if adjustment else {}

    # --- HTTP ----------------------------------------------------------------------------------
    async def _session_ready(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                headers = {"Accept": "application/json"}
                if self.credentials:
                    headers["APCA-API-KEY-ID"] = self.credentials.get("key_id", "")
                    headers["APCA-API-SECRET-KEY"] = self.credentials.get("secret_key", "")
                self._session = aiohttp.ClientSession(
                    headers=headers, timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
            return self._session

    async def close(self) -> None:
        """Close the HTTP session. Idempotent; a later call opens a new one."""
        async with self._lock:
            session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def _request_api(
        self, path: str, params: dict[str, str] | None = None, *, trading: bool = False
    ) -> Any:
        """GET ``path`` on the data (or trading) host; the decoded JSON, or our error class."""
        session = await self._session_ready()
        url = (self.trading_url if trading else self.data_url) + path
        try:
            async with session.get(url, params=params) as resp:
                status, headers = resp.status, dict(resp.headers)
                text = await resp.text(errors="replace")
        except TimeoutError as exc:
            raise NetworkPluginError(f"alpaca: timed out after {self.settings.timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise NetworkPluginError(f"alpaca: unreachable ({type(exc).__name__})") from exc
        if status >= 400:
            raise self._http_error(status, headers, text)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise MalformedResponseError(f"alpaca: {path} answered 200 with invalid JSON") from exc

    def _http_error(self, status: int, headers: dict[str, str], text: str) -> AppError:
        """Alpaca's status codes mapped to our classes (message trimmed, never the URL)."""
        try:
            message = str(json.loads(text).get("message", ""))[:200]
        except (ValueError, AttributeError):
            message = ""
        details = {"provider": "alpaca", "status": status, "upstream": message}
        retry_after = parse_retry_after(headers, int(time.time() * 1000))
        if retry_after is None and "X-RateLimit-Reset" in headers:
            try:
                retry_after = max(0.0, float(headers["X-RateLimit-Reset"]) - time.time())
            except ValueError:
                retry_after = None
        if status in (401, 403):
            return AuthenticationPluginError("alpaca: credentials were refused", details=details)
        if status == 429:
            return RateLimitedPluginError("alpaca: rate limited", details=details,
                                          retry_after=retry_after)
        if status >= 500:
            return NetworkPluginError(f"alpaca: unavailable ({status})", details=details,
                                      retry_after=retry_after)
        if status == 404 or "symbol" in message.lower():
            return UnknownSymbol(f"alpaca: {message or 'not found'}", details=details)
        return PluginError(f"alpaca: request refused ({status})", details=details)

    # --- Data ----------------------------------------------------------------------------------
    async def _known_symbols(self) -> frozenset[str]:
        cached = self._symbols
        if cached is not None and time.monotonic() - cached[0] <= self.settings.symbols_ttl:
            return cached[1]
        symbols = await self.retry.call(self._fetch_assets)
        self._symbols = (time.monotonic(), symbols)
        return symbols

    async def _fetch_assets(self) -> frozenset[str]:
        body = await self._request_api(
            "/v2/assets", {"status": "active", "asset_class": "us_equity"}, trading=True)
        if not isinstance(body, list):
            raise MalformedResponseError("alpaca: /v2/assets did not answer a list")
        return frozenset(a["symbol"] for a in body
                         if isinstance(a, dict) and isinstance(a.get("symbol"), str))

    async def _check_symbol(self, symbol: str) -> None:
        if symbol not in await self._known_symbols():
            raise UnknownSymbol(f"alpaca has no asset {symbol!r}",
                                details={"symbol": ["unknown on alpaca"]})

    async def fetch_symbols(self) -> list[str]:
        """Active US equity symbols (``AAPL``), from the trading API's assets."""
        return sorted(await self._known_symbols())

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        """Bars from ``since`` (before ``until``), following ``next_page_token`` until ``limit``
        bars or the range's end; each page is retried on temporary errors."""
        if timeframe not in TIMEFRAMES:
            raise PluginFeatureNotSupportedError(
                f"alpaca does not serve {timeframe} bars natively",
                details={"timeframe": [f"one of {', '.join(TIMEFRAMES)}"]})
        await self._check_symbol(symbol)
        limit = max(1, min(limit, MAX_PAGE))
        if until is not None and until <= since:
            return []
        params = {"timeframe": TIMEFRAMES[timeframe], "start": rfc3339(since),
                  "limit": str(limit), **self._feed(), **self._adjustment(),
                  "sort": "asc"}
        if until is not None:
            params["end"] = rfc3339(until - 1)  # Alpaca's end is inclusive
        path = f"/v2/stocks/{quote(symbol, safe='')}/bars"
        by_ts: dict[int, Bar] = {}
        while True:
            page = functools.partial(self._fetch_page, path, dict(params), timeframe)
            bars, token = await self.retry.call(page)
            for bar in bars:
                if bar[0] >= since and (until is None or bar[0] < until):
                    by_ts[int(bar[0])] = bar
            if len(by_ts) >= limit or not token:
                break
            params.update(page_token=token, limit=str(limit - len(by_ts)))
        return [by_ts[ts] for ts in sorted(by_ts)][:limit]

    async def _fetch_page(
        self, path: str, params: dict[str, str], timeframe: str
    ) -> tuple[list[Bar], str | None]:
        """One bars page (parsed inside the retry, so a malformed body is retried too)."""
        return self._parse_page(await self._request_api(path, params), timeframe)

    @staticmethod
    def _parse_page(body: Any, timeframe: str) -> tuple[list[Bar], str | None]:
        if not isinstance(body, dict) or "bars" not in body:
            raise MalformedResponseError("alpaca: bars answer without a bars field")
        raw, token = body.get("bars"), body.get("next_page_token")
        if raw is None:  # Alpaca answers null when the range has no bars
            raw = []
        if not isinstance(raw, list) or not (token is None or isinstance(token, str)):
            raise MalformedResponseError("alpaca: bars answer is not a bar list")
        try:
            return [parse_bar(b, timeframe) for b in raw], token or None
        except ValueError as exc:
            raise MalformedResponseError("alpaca: malformed bar",
                                         details={"reason": str(exc)}) from exc

    async def fetch_ticker(self, symbol: str) -> Ticker:
        """Last trade price and the latest quote's bid/ask from the snapshot."""
        await self._check_symbol(symbol)
        path = f"/v2/stocks/{quote(symbol, safe='')}/snapshot"
        return await self.retry.call(functools.partial(self._fetch_snapshot, path))

    async def symbol_meta(self, symbol: str) -> SymbolMeta:
        """US stocks are quoted in cents and traded in whole shares."""
        return SymbolMeta(price_tick=0.01, volume_tick=1.0, description=symbol)

    async def _fetch_snapshot(self, path: str) -> Ticker:
        body = await self._request_api(path, self._feed())
        try:
            trade = body.get("latestTrade") or {}
            quote_ = body.get("latestQuote") or {}
            bar = body.get("minuteBar") or {}
            last = trade.get("p", bar.get("c"))
            ts = parse_ts(trade.get("t") or bar.get("t"))
            return Ticker(ts=ts, last=_num(last), bid=_positive(quote_.get("bp")),
                          ask=_positive(quote_.get("ap")))
        except (AttributeError, ValueError) as exc:
            raise MalformedResponseError("alpaca: malformed snapshot") from exc
