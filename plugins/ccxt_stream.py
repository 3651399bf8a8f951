"""CCXT Pro kline streams: one ``ccxt.pro`` exchange per provider on this instance, shared by every
live channel of that provider here, so their subscriptions share CCXT Pro's connections (Binance:
up to 200 streams on one connection).

``KlineStreams.watch(symbol, timeframe)`` waits for the next updates of one kline stream and
returns them as ``KlineUpdate``s. Only CCXT's public API is used (the exchange's options and URLs,
``load_markets``, ``watch_ohlcv``, ``watch_ohlcv_for_symbols``, ``un_watch_ohlcv``, ``close``):
a bar counts as closed once a later one arrives, its event time is unknown, and candles that do
not parse are counted and skipped (``ccxt_frames`` says what CCXT does not expose and why). A
connection that says nothing for a while is closed with the whole exchange object (CCXT has no
public per-connection health: https://github.com/ccxt/ccxt/issues/25092); the next ``watch``
dials anew with the markets already loaded. First subscriptions made within
``BATCH_SECONDS`` of each other go out as one subscribe message (exchanges pace them: Binance
takes 5 messages a second per connection, so one by one 100 channels would need 20 s).

URLs: ``ws_base_url`` (``PROVIDER_WS_URLS``) replaces the scheme and host of every stream URL as
``rebase_urls`` does for REST (``rest_base_url``, ``PROVIDER_URLS``). ``stream_possible`` says
whether a provider can stream at all: CCXT Pro must have ``watchOHLCV`` for it, and a provider
whose REST is overridden but whose streams are not is never streamed (it would reach the real
exchange behind a proxy's back).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.pro as ccxtpro

from core.errors import AppError, NetworkPluginError, PluginFeatureNotSupportedError
from core.metrics import STREAM_MALFORMED
from core.timeframes import Bar
from plugins.ccxt_errors import translate
from plugins.ccxt_frames import KlineUpdate, checked_row
from plugins.ccxt_support import rebase_urls

log = logging.getLogger(__name__)
#: First subscriptions asked within this many seconds go out as one message, at most MAX_BATCH.
BATCH_SECONDS = 0.05
MAX_BATCH = 200


def rebase_ws_urls(urls: Any, base_url: str) -> Any:
    """Every ws(s) URL in ``urls`` (nested dicts/lists) with scheme and host replaced by
    ``base_url``'s (whose path, if any, is prefixed); paths and queries are kept."""
    if isinstance(urls, dict):
        return {k: rebase_ws_urls(v, base_url) for k, v in urls.items()}
    if isinstance(urls, list):
        return [rebase_ws_urls(v, base_url) for v in urls]
    if isinstance(urls, str) and urls.startswith(("ws://", "wss://")):
        base, parts = urlsplit(base_url), urlsplit(urls)
        path = base.path.rstrip("/") + parts.path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))
    return urls


@functools.cache
def has_kline_stream(exchange_id: str) -> bool:
    """True when CCXT Pro has ``watchOHLCV`` for ``exchange_id``."""
    cls = getattr(ccxtpro, exchange_id, None)
    if exchange_id not in ccxtpro.exchanges or not isinstance(cls, type):
        return False
    return bool(cls().has.get("watchOHLCV"))


def stream_possible(exchange_id: str, rest_base_url: str | None, ws_base_url: str | None) -> bool:
    """True when CCXT Pro streams ``exchange_id``'s klines and the URLs allow it (see module)."""
    if rest_base_url and not ws_base_url:
        return False
    return has_kline_stream(exchange_id)


class KlineStreams:
    """The kline streams of one provider on this instance (one ``ccxt.pro`` exchange)."""

    def __init__(self, exchange_id: str, *, ws_base_url: str | None = None,
                 rest_base_url: str | None = None, market_types: tuple[str, ...],
                 timeout: float) -> None:
        self.exchange_id = exchange_id
        self.ws_base_url, self.rest_base_url = ws_base_url, rest_base_url
        self.market_types, self.timeout = market_types, timeout
        self._exchange: Any = None
        self._lock = asyncio.Lock()
        #: Markets (and currencies) of an exchange object that was closed, for its successor.
        self._markets: tuple[Any, Any] | None = None
        #: Monotonic time the current exchange object was made or last gave candles.
        self._heard = 0.0
        #: Candles skipped because they did not parse.
        self.malformed = 0
        #: Newest bar seen per stream (a later one closes it).
        self._last: dict[tuple[str, str], Bar] = {}
        #: (symbol, timeframe) subscribed, waiting for the next batch, and the batch tasks.
        self._subscribed: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _build(self) -> Any:
        cls = getattr(ccxtpro, self.exchange_id, None)
        if not stream_possible(self.exchange_id, self.rest_base_url, self.ws_base_url):
            raise PluginFeatureNotSupportedError(f"{self.exchange_id} has no usable kline stream")
        assert isinstance(cls, type)
        exchange = cls({"enableRateLimit": True, "timeout": int(self.timeout * 1000)})
        fetch_markets = exchange.options.get("fetchMarkets")
        if isinstance(fetch_markets, dict) and isinstance(fetch_markets.get("types"), list):
            exchange.options["fetchMarkets"] = {**fetch_markets, "types": list(self.market_types)}
        exchange.options["defaultType"] = self.market_types[0]
        exchange.options["fetchMargins"] = False
        exchange.has["fetchCurrencies"] = False
        if self.rest_base_url:
            exchange.urls["api"] = rebase_urls(exchange.urls["api"], self.rest_base_url)
        if self.ws_base_url:
            exchange.urls["api"] = rebase_ws_urls(exchange.urls["api"], self.ws_base_url)
        if self._markets is not None:
            exchange.set_markets(*self._markets)
        self._heard = time.monotonic()
        return exchange

    async def _ready(self) -> Any:
        async with self._lock:
            if self._exchange is None:
                self._exchange = self._build()
            exchange = self._exchange
        if not exchange.markets:
            await exchange.load_markets()
        return exchange

    async def watch(self, symbol: str, timeframe: str) -> list[KlineUpdate]:
        """The next updates of ``symbol``'s ``timeframe`` klines (subscribing on first use).
        Raises ``NetworkPluginError`` when the stream fails (refused, dropped, closed) and the
        CCXT error's translation otherwise."""
        key = (symbol, timeframe)
        try:
            exchange = await self._ready()
            exchange.market(symbol)
            if key not in self._subscribed:
                self._last.pop(key, None)  # left from an earlier subscription
            await self._batched(exchange, key)
            while True:
                if exchange is not self._exchange:  # closed under us (reset_silent, close)
                    raise NetworkPluginError(f"{self.exchange_id} stream closed")
                candles = await exchange.watch_ohlcv(symbol, timeframe)
                if exchange is self._exchange:
                    self._heard = time.monotonic()
                updates = self._inferred(key, candles)
                if updates:
                    return updates
        except AppError:
            self._subscribed.clear()  # a new connection needs every subscription again
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # CCXT cancels its futures when a connection is closed under them (reset_silent)
            self._subscribed.clear()
            raise NetworkPluginError(f"{self.exchange_id} stream closed") from None
        except ccxtpro.BaseError as exc:
            self._subscribed.clear()
            raise translate(exc, self.exchange_id) from exc
        except (OSError, ValueError) as exc:
            self._subscribed.clear()
            raise NetworkPluginError(f"{self.exchange_id} stream failed: {exc}") from exc

    async def _batched(self, exchange: Any, key: tuple[str, str]) -> None:
        """Subscribe ``key`` with the others asked within ``BATCH_SECONDS`` (one message)."""
        if key in self._subscribed:
            return
        if not exchange.has.get("watchOHLCVForSymbols"):  # CCXT subscribes it on its own
            self._subscribed.add(key)
            return
        waiter = self._pending.get(key)
        if waiter is None:
            waiter = self._pending[key] = asyncio.get_running_loop().create_future()
            if len(self._pending) == 1:
                self._spawn(self._send_batch(exchange))
        await asyncio.shield(waiter)

    async def _send_batch(self, exchange: Any) -> None:
        await asyncio.sleep(BATCH_SECONDS)
        batch, self._pending = self._pending, {}
        keys = list(batch)
        for i in range(0, len(keys), MAX_BATCH):
            part = [list(k) for k in keys[i:i + MAX_BATCH]]
            # CCXT registers the subscriptions and sends one message, then waits for data: that
            # wait is left to the channels' own watch calls (which find them subscribed).
            self._spawn(exchange.watch_ohlcv_for_symbols(part))
        for _ in range(3):
            await asyncio.sleep(0)  # let CCXT register them before the channels watch
        self._subscribed.update(keys)
        for waiter in batch.values():
            if not waiter.done():
                waiter.set_result(None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s: batched subscribe ended: %s", self.exchange_id, task.exception())

    def _inferred(self, key: tuple[str, str], candles: Any) -> list[KlineUpdate]:
        """Updates from CCXT's parsed candles: a bar is closed once a later one arrived. A candle
        that does not parse is counted (``malformed``) and skipped."""
        out: list[KlineUpdate] = []
        for row in candles if isinstance(candles, list) else [candles]:
            try:
                bar = checked_row(row)
            except ValueError as exc:
                self.malformed += 1
                STREAM_MALFORMED.labels(self.exchange_id).inc()
                log.warning("%s stream: malformed candle skipped: %s", self.exchange_id, exc)
                continue
            last = self._last.get(key)
            if last is not None and bar[0] > last[0]:
                out.append(KlineUpdate(last, True, None))
            if last is None or bar[0] >= last[0]:
                self._last[key] = bar
                out.append(KlineUpdate(bar, False, None))
        return out

    async def unwatch(self, symbol: str, timeframe: str, wait: float | None = None) -> None:
        """Unsubscribe one stream (its connection stays for the others); waits at most
        ``wait`` seconds (default: the provider timeout) for the exchange to confirm."""
        exchange = self._exchange
        self._subscribed.discard((symbol, timeframe))
        self._last.pop((symbol, timeframe), None)
        if exchange is None or not exchange.has.get("unWatchOHLCV"):
            return
        try:
            await asyncio.wait_for(exchange.un_watch_ohlcv(symbol, timeframe),
                                   self.timeout if wait is None else wait)
        except (ccxtpro.BaseError, OSError, TimeoutError) as exc:
            log.info("%s: unsubscribe of %s %s failed: %s", self.exchange_id, symbol, timeframe,
                     exc)

    async def reset_silent(self, silence: float) -> int:
        """When no stream of this provider gave a candle for ``silence`` seconds, close the
        provider's connections (the whole CCXT exchange object: CCXT has no public way to see or
        close one connection); the next ``watch`` dials again, with the markets kept. Returns 1
        when it closed them, 0 when something was heard (or nothing was open). A provider
        streaming several market types (one connection each) is reset only when all are
        silent: one connection's silence is not visible through CCXT's public API."""
        exchange = self._exchange
        if exchange is None or time.monotonic() - self._heard < silence:
            return 0
        log.info("%s stream: nothing for %.1f s; its connections are closed", self.exchange_id,
                 silence)
        await self._discard(exchange)
        return 1

    async def _discard(self, exchange: Any) -> None:
        """Forget ``exchange`` (keeping its markets for the next one) and close it; the watch
        calls waiting on it end with ``NetworkPluginError``."""
        if self._exchange is exchange:
            self._exchange = None
            self._subscribed.clear()
            if exchange.markets:
                self._markets = (exchange.markets, exchange.currencies)
        await self._close_exchange(exchange)

    async def _close_exchange(self, exchange: Any) -> None:
        try:
            await exchange.close()
        except (ccxtpro.BaseError, OSError) as exc:
            log.warning("%s stream: close failed: %s", self.exchange_id, exc)

    async def close(self) -> None:
        """Close the connections and the exchange's HTTP session (never raises)."""
        exchange, self._exchange = self._exchange, None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for waiter in self._pending.values():
            waiter.cancel()
        self._pending, self._subscribed = {}, set()
        if exchange is not None:
            await self._close_exchange(exchange)
