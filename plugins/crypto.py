"""CryptoPlugin: any CCXT exchange over ``ccxt.async_support``.

One instance serves one exchange id with its credentials and testnet flag. The CCXT object is made
lazily under an ``asyncio.Lock`` (nothing happens in ``__init__``): ``enableRateLimit`` on (off
for exchanges whose request weights the capabilities state: the provider budget paces those), only
the market types of ``CCXT_MARKET_TYPES``, sandbox mode for testnet, then the ``PROVIDER_URLS``
base URL applied to every API family. Markets are loaded once and shared by instances of the same
(exchange, testnet, base URL) for ``CACHE_TTL_SYMBOLS`` seconds. Every upstream call goes through
the retry policy, and CCXT errors are translated at this boundary (``ccxt_errors``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ccxt.async_support as ccxt

from core.errors import (
    MalformedResponseError,
    PluginFeatureNotSupportedError,
    UnknownProvider,
    UnknownSymbol,
)
from core.timeframes import Bar, tf_ms
from plugins.base import Capabilities, MarketPlugin, PluginSettings, ProviderInfo, SymbolMeta, Ticker
from plugins.ccxt_errors import translate
from plugins.ccxt_support import capabilities_for, clean_bars, exchange_class, rebase_urls

T = TypeVar("T")
_CREDENTIAL_KEYS = ("apiKey", "secret", "password", "uid")
#: Shared markets: (exchange id, testnet, base URL, types) -> (loaded at, markets, currencies).
_MARKETS: dict[tuple[str, bool, str, tuple[str, ...]], tuple[float, Any, Any]] = {}


def _truthy(raw: Any) -> bool:
    return raw is True or str(raw).lower() in ("1", "true", "yes", "on")


class CryptoPlugin(MarketPlugin):
    """Crypto spot market data from a CCXT exchange."""

    plugin_key = "crypto"
    supported_markets = ("crypto",)

    def __init__(self, provider_id: str, **kwargs: Any) -> None:
        super().__init__(provider_id, **kwargs)
        #: CCXT market types loaded (``CCXT_MARKET_TYPES``); the first is CCXT's default type.
        self.market_types = self.settings.market_types
        self._exchange: Any = None
        self._markets_at = 0.0
        self._lock = asyncio.Lock()

    # --- Configuration -------------------------------------------------------------------------
    @classmethod
    def list_configurable_providers(cls, settings: PluginSettings) -> list[ProviderInfo]:
        """The exchanges of ``CCXT_EXCHANGES``; public market data needs no credentials, so each
        is usable (``configured``) without them."""
        return [
            ProviderInfo(provider=ex, requires_credentials=False, configured=True,
                         timeframes=list(capabilities_for(ex).timeframes))
            for ex in settings.exchanges
        ]

    @classmethod
    def settings_from_config(
        cls, provider_id: str, settings: PluginSettings
    ) -> tuple[dict[str, str], bool]:
        """Credentials and testnet flag from ``CCXT_CREDENTIALS[provider_id]``."""
        entry = settings.ccxt_credentials.get(provider_id) or {}
        creds = {k: str(entry[k]) for k in _CREDENTIAL_KEYS if entry.get(k)}
        return creds, _truthy(entry.get("testnet", False))

    @property
    def capabilities(self) -> Capabilities:
        return capabilities_for(self.provider_id)

    # --- Exchange lifecycle --------------------------------------------------------------------
    def _build(self) -> Any:
        cls = exchange_class(self.provider_id)
        if cls is None:
            raise UnknownProvider(f"{self.provider_id!r} is not a CCXT exchange id")
        throttle = not self.capabilities.extra.get("weights")
        exchange = cls({"enableRateLimit": throttle, "timeout": int(self.settings.timeout * 1000),
                        **self.credentials})
        fetch_markets = exchange.options.get("fetchMarkets")
        if isinstance(fetch_markets, dict) and isinstance(fetch_markets.get("types"), list):
            wanted = [t for t in fetch_markets["types"] if t in self.market_types]
            exchange.options["fetchMarkets"] = {**fetch_markets, "types": wanted or ["spot"]}
        exchange.options["defaultType"] = self.market_types[0]
        # Market data never needs currencies; with keys CCXT would fetch them from private,
        # signed endpoints (Binance's /sapi capital config) on every markets load.
        exchange.has["fetchCurrencies"] = False
        exchange.options.update(self.capabilities.extra.get("ccxt_options", {}))
        if self.testnet:
            exchange.set_sandbox_mode(True)
        if self.base_url:
            exchange.urls["api"] = rebase_urls(exchange.urls["api"], self.base_url)
        return exchange

    def _markets_key(self) -> tuple[str, bool, str, tuple[str, ...]]:
        return self.provider_id, self.testnet, self.base_url or "", self.market_types

    async def _ready(self) -> Any:
        """The CCXT exchange with markets loaded (made and loaded once, under the lock)."""
        async with self._lock:
            if self._exchange is None:
                try:
                    self._exchange = self._build()
                except ccxt.BaseError as exc:
                    raise translate(exc, self.provider_id) from exc
            exchange = self._exchange
            if time.monotonic() - self._markets_at > self.settings.symbols_ttl or not exchange.markets:
                await self._load_markets(exchange)
            return exchange

    async def _load_markets(self, exchange: Any) -> None:
        key, now = self._markets_key(), time.monotonic()
        shared = _MARKETS.get(key)
        if shared is not None and now - shared[0] <= self.settings.symbols_ttl:
            exchange.set_markets(shared[1], shared[2])
            self._markets_at = shared[0]
            return
        await self._translated(lambda: exchange.load_markets(reload=bool(exchange.markets)))
        _MARKETS[key] = (now, exchange.markets, exchange.currencies)
        self._markets_at = now

    async def close(self) -> None:
        """Close the CCXT exchange (its aiohttp session). Idempotent; a later call reopens."""
        async with self._lock:
            exchange, self._exchange = self._exchange, None
            self._markets_at = 0.0
        if exchange is not None:
            await exchange.close()

    # --- Calls ---------------------------------------------------------------------------------
    async def _translated(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ccxt.BaseError as exc:
            raise translate(exc, self.provider_id, int(time.time() * 1000)) from exc

    def _market(self, exchange: Any, symbol: str) -> dict[str, Any]:
        market = exchange.markets.get(symbol) if exchange.markets else None
        if market is None or not any(market.get(t) or market.get("type") == t
                                     for t in self.market_types):
            raise UnknownSymbol(f"{self.provider_id} has no market {symbol!r}",
                                details={"symbol": [f"unknown on {self.provider_id}"]})
        return dict(market)

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int, until: int | None = None
    ) -> list[Bar]:
        """Up to ``min(limit, max_bars_per_call)`` bars of ``timeframe`` from ``since`` (and before
        ``until``) in one upstream call, retried on temporary errors."""
        caps = self.capabilities
        if timeframe not in caps.timeframes:
            raise PluginFeatureNotSupportedError(
                f"{self.provider_id} does not serve {timeframe} candles",
                details={"timeframe": [f"one of {', '.join(caps.timeframes)}"]})
        limit = max(1, min(limit, caps.max_bars_per_call))
        if until is not None and until <= since:
            return []

        async def once() -> list[Bar]:
            exchange = await self._ready()
            self._market(exchange, symbol)
            # CCXT's ``until`` is inclusive (Binance endTime); ours is exclusive.
            params = {"until": until - 1} if until is not None else {}
            raw = await self._translated(
                lambda: exchange.fetch_ohlcv(symbol, timeframe, since, limit, params))
            bars = clean_bars(raw, self.provider_id, since, until, limit)
            if not bars and self._must_have_bars(timeframe, since, until):
                raise MalformedResponseError(
                    f"{self.provider_id}: empty kline page where the exchange has bars")
            return bars

        return await self.retry.call(once)

    def used_weight(self) -> int | None:
        """The weight the exchange's last answer says we used this minute, where it says."""
        name = self.capabilities.extra.get("used_weight_header")
        headers = getattr(self._exchange, "last_response_headers", None)
        if not name or not isinstance(headers, dict):
            return None
        value = next((v for k, v in headers.items() if str(k).lower() == name), None)
        return int(value) if value is not None and str(value).strip().isdigit() else None

    def _must_have_bars(self, timeframe: str, since: int, until: int | None) -> bool:
        """An exchange that emits every bucket must answer a past range that reaches now."""
        now = int(time.time() * 1000)
        return (bool(self.capabilities.extra.get("always_has_bars"))
                and since <= now - 2 * tf_ms(timeframe) and (until is None or until >= now))

    async def fetch_symbols(self) -> list[str]:
        """Active markets of the configured types, in CCXT's unified form (``BTC/USDT``)."""

        async def once() -> list[str]:
            exchange = await self._ready()
            return sorted(
                s for s, m in exchange.markets.items()
                if m.get("active") is not False
                and any(m.get(t) or m.get("type") == t for t in self.market_types))

        return await self.retry.call(once)

    async def fetch_ticker(self, symbol: str) -> Ticker:
        """Last price with bid and ask when the exchange gives them."""

        async def once() -> Ticker:
            exchange = await self._ready()
            self._market(exchange, symbol)
            t = await self._translated(lambda: exchange.fetch_ticker(symbol))
            last = t.get("last") if isinstance(t, dict) else None
            if last is None and isinstance(t, dict):
                last = t.get("close")
            if not isinstance(last, int | float):
                raise MalformedResponseError(f"{self.provider_id}: ticker without a last price")
            ts = t.get("timestamp")
            return Ticker(ts=int(ts) if isinstance(ts, int | float) else int(time.time() * 1000),
                          last=float(last), bid=_opt_float(t.get("bid")),
                          ask=_opt_float(t.get("ask")))

        return await self.retry.call(once)

    async def symbol_meta(self, symbol: str) -> SymbolMeta:
        """The market's price and amount precision from the exchange's loaded markets (no call
        beyond the shared markets load)."""

        async def once() -> SymbolMeta:
            exchange = await self._ready()
            market = self._market(exchange, symbol)
            precision = market.get("precision") or {}
            mode = exchange.precisionMode
            return SymbolMeta(price_tick=precision_step(precision.get("price"), mode),
                              volume_tick=precision_step(precision.get("amount"), mode),
                              description=f"{market.get('base', '')} / {market.get('quote', '')}")

        return await self.retry.call(once)


def precision_step(value: Any, mode: int) -> float | None:
    """A CCXT precision as a step: TICK_SIZE gives the step itself, DECIMAL_PLACES a count of
    decimals; SIGNIFICANT_DIGITS has no fixed step (None)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return None
    if mode == ccxt.TICK_SIZE:
        return float(value) if value > 0 else None
    if mode == ccxt.DECIMAL_PLACES:
        return 10.0 ** -int(value)
    return None


def _opt_float(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None
