"""CCXT Pro kline streams: one ``ccxt.pro`` exchange per provider on this instance, shared by every
live channel of that provider here, so their subscriptions share CCXT Pro's connections (Binance:
up to 200 streams on one connection).

``KlineStreams.watch(symbol, timeframe)`` waits for the next updates of one kline stream and
returns them as ``KlineUpdate``s (the bar, whether the exchange says it is closed, the exchange's
event time). Raw frames are checked before CCXT parses them (``ccxt_frames``). Binance's frames
carry ``x`` (closed) and ``E`` (event time); for other exchanges a bar counts as closed once a
later one arrives and the event time is unknown. First subscriptions made within
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
from core.timeframes import Bar
from plugins.ccxt_errors import translate
from plugins.ccxt_frames import FRAME_READERS, CheckedFrames, KlineUpdate, finite
from plugins.ccxt_support import rebase_urls

log = logging.getLogger(__name__)
#: First subscriptions asked within this many seconds go out as one message, at most MAX_BATCH.
BATCH_SECONDS = 0.05
MAX_BATCH = 200
#: Longest wait for the update following a closed bar (``KlineStreams._follow``).
FOLLOW_SECONDS = 0.02


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
                 rest_base_url: str | None = None, market_types: tuple[str, ...] = ("spot",),
                 timeout: float = 10.0) -> None:
        self.exchange_id = exchange_id
        self.ws_base_url, self.rest_base_url = ws_base_url, rest_base_url
        self.market_types, self.timeout = market_types, timeout
        self._exchange: Any = None
        self._lock = asyncio.Lock()
        #: Newest bar seen per stream (CCXT-parsed path: a later one closes it).
        self._last: dict[tuple[str, str], Bar] = {}
        #: (symbol, timeframe) subscribed, waiting for the next batch, and the batch tasks.
        self._subscribed: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def malformed(self) -> int:
        """Frames skipped because they did not parse."""
        return int(getattr(self._exchange, "malformed", 0))

    def _build(self) -> Any:
        base = getattr(ccxtpro, self.exchange_id, None)
        if not stream_possible(self.exchange_id, self.rest_base_url, self.ws_base_url):
            raise PluginFeatureNotSupportedError(f"{self.exchange_id} has no usable kline stream")
        assert isinstance(base, type)
        cls = type(f"Checked_{self.exchange_id}", (CheckedFrames, base), {})
        exchange = cls({"enableRateLimit": True, "timeout": int(self.timeout * 1000)})
        exchange.malformed, exchange.updates, exchange.arrivals = 0, {}, {}
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
        Raises ``NetworkPluginError`` when the stream fails (refused, dropped) and the CCXT
        error's translation otherwise."""
        try:
            exchange = await self._ready()
            market = exchange.market(symbol)
            key = (market["id"], exchange.timeframes.get(timeframe, timeframe))
            if (symbol, timeframe) not in self._subscribed:
                exchange.updates.pop(key, None)  # left from an earlier subscription
            await self._batched(exchange, (symbol, timeframe))
            reader = self.exchange_id in FRAME_READERS
            while True:
                queue = exchange.updates.get(key)
                if reader and queue:  # frames that came while the caller was busy: no wait
                    if queue[-1].closed:
                        await self._follow(exchange, key)
                    updates = list(queue)
                    queue.clear()
                    return updates
                candles = await exchange.watch_ohlcv(symbol, timeframe)
                updates = [] if reader else self._inferred(key, candles)
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

    @staticmethod
    async def _follow(exchange: Any, key: tuple[str, str]) -> None:
        """Wait up to ``FOLLOW_SECONDS`` for the update after a closed bar: an exchange sends the
        next bucket's first bar right after the close (Binance: in the same push), often in the
        next read of the socket; both are then one publish instead of two one after the other."""
        arrived = asyncio.get_running_loop().create_future()
        exchange.arrivals[key] = arrived
        try:
            await asyncio.wait({arrived}, timeout=FOLLOW_SECONDS)
        finally:
            if exchange.arrivals.get(key) is arrived:
                del exchange.arrivals[key]

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

    def _inferred(self, key: tuple[str, str], candles: list[list[Any]]) -> list[KlineUpdate]:
        """Updates from CCXT's parsed candles: a bar is closed once a later one arrived."""
        out: list[KlineUpdate] = []
        for row in candles:
            bar: Bar = [int(row[0]), *(finite(v) for v in row[1:6])]
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
        if exchange is None or not exchange.has.get("unWatchOHLCV"):
            return
        try:
            await asyncio.wait_for(exchange.un_watch_ohlcv(symbol, timeframe),
                                   self.timeout if wait is None else wait)
        except (ccxtpro.BaseError, OSError, TimeoutError) as exc:
            log.info("%s: unsubscribe of %s %s failed: %s", self.exchange_id, symbol, timeframe,
                     exc)

    async def reset_silent(self, silence: float) -> int:
        """Close the connections that received nothing for ``silence`` seconds (a stalled
        stream); the next ``watch`` dials again. Returns how many were closed."""
        exchange = self._exchange
        if exchange is None:
            return 0
        now, closed = time.time() * 1000, 0
        for url, client in list((exchange.clients or {}).items()):
            last = getattr(client, "last_message_at", None) or getattr(
                client, "connectionEstablished", None) or 0
            if now - last > silence * 1000:
                closed += 1
                exchange.clients.pop(url, None)
                client.reject(ccxtpro.NetworkError(f"{url} silent for {silence} s"))
                await client.close()
        return closed

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
            try:
                await exchange.close()
            except (ccxtpro.BaseError, OSError) as exc:
                log.warning("%s stream: close failed: %s", self.exchange_id, exc)
