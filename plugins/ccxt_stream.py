"""CCXT Pro kline streams: one ``ccxt.pro`` exchange per provider on this instance, shared by every
live channel of that provider here, so their subscriptions share CCXT Pro's connections (Binance:
up to 200 streams on one connection).

``KlineStreams.watch(symbol, timeframe)`` waits for the next updates of one kline stream and
returns them as ``KlineUpdate``s (the bar, whether the exchange says it is closed, the exchange's
event time). Raw frames are checked at this boundary before CCXT parses them: a frame that is not
JSON, or a kline frame whose bar does not parse, is counted (``malformed``) and skipped, so it can
neither crash CCXT's receive loop nor reach a client. Binance's frames carry ``x`` (closed) and
``E`` (event time); for other exchanges a bar counts as closed once a later one arrives and the
event time is unknown.

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
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.pro as ccxtpro
from ccxt.async_support.base.ws.client import Client

from core.errors import AppError, NetworkPluginError, PluginFeatureNotSupportedError
from core.metrics import STREAM_MALFORMED
from core.timeframes import Bar
from plugins.ccxt_errors import translate
from plugins.ccxt_support import rebase_urls

log = logging.getLogger(__name__)
#: Updates kept per stream between two ``watch`` calls (older ones are dropped: REST refills).
MAX_BUFFERED = 1000


@dataclass(frozen=True)
class KlineUpdate:
    """One kline event: the bar, closed per the exchange, and its event time (ms) if known."""

    bar: Bar
    closed: bool
    event_ms: int | None


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


def _finite(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"not a number: {raw!r:.40}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {raw!r:.40}")
    return value


def binance_kline(message: Any) -> tuple[str, str, KlineUpdate] | None:
    """(market id, interval, update) of a Binance kline frame (raw or combined), None for any
    other frame; raises ``ValueError`` when a kline frame's bar does not parse."""
    if isinstance(message, dict) and isinstance(message.get("data"), dict):
        message = message["data"]
    if not isinstance(message, dict) or message.get("e") != "kline":
        return None
    k = message.get("k")
    if not isinstance(k, dict):
        raise ValueError("kline frame without its bar")
    ts, market_id, interval, closed = k.get("t"), k.get("s"), k.get("i"), k.get("x")
    if not (isinstance(ts, int) and not isinstance(ts, bool) and isinstance(market_id, str)
            and isinstance(interval, str) and isinstance(closed, bool)):
        raise ValueError("kline frame without t, s, i or x")
    bar = [ts, *(_finite(k.get(f)) for f in ("o", "h", "l", "c", "v"))]
    event = message.get("E")
    event_ms = event if isinstance(event, int) and not isinstance(event, bool) else None
    return market_id, interval, KlineUpdate(bar, closed, event_ms)


#: Raw kline frame readers per exchange (data, not branches); others use CCXT's parsed candles.
FRAME_READERS = {"binance": binance_kline}


class CheckedClient(Client):  # type: ignore[misc]
    """CCXT's WebSocket client, except that a text frame that is not JSON is handed on as such
    (CCXT's ``json.loads`` raised out of its receive loop: the connection stayed open, deaf)."""

    def handle_text_or_binary_message(self, data: Any) -> None:
        try:
            super().handle_text_or_binary_message(data)
        except ValueError as exc:  # orjson.JSONDecodeError
            self.on_message_callback(self, f"not JSON ({exc}): {data!s:.60}")


class CheckedFrames:
    """Mixed in front of a ``ccxt.pro`` class: every inbound frame is checked first (module)."""

    id: str
    malformed: int
    updates: dict[tuple[str, str], deque[KlineUpdate]]

    def client(self, url: str) -> Any:
        client = super().client(url)  # type: ignore[misc]
        if type(client) is Client:  # CCXT makes plain clients; ours only differs in one method
            client.__class__ = CheckedClient
        return client

    def handle_message(self, client: Any, message: Any) -> None:
        reader = FRAME_READERS.get(self.id)
        try:
            if not isinstance(message, dict | list):
                raise ValueError(f"not a JSON frame: {message!s:.60}")
            kline = reader(message) if reader is not None else None
        except ValueError as exc:
            self._malformed(exc)
            return
        if kline is not None:
            market_id, interval, update = kline
            key = (market_id, interval)
            if key not in self.updates:
                self.updates[key] = deque(maxlen=MAX_BUFFERED)
            self.updates[key].append(update)
        try:
            super().handle_message(client, message)  # type: ignore[misc]
        except Exception as exc:  # CCXT failed on a frame: skipped, counted, never crashes the loop
            self._malformed(exc)

    def _malformed(self, exc: BaseException) -> None:
        self.malformed += 1
        STREAM_MALFORMED.labels(self.id).inc()
        log.warning("%s stream: malformed frame skipped: %s", self.id, exc)


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
        exchange.malformed, exchange.updates = 0, {}
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
            while True:
                candles = await exchange.watch_ohlcv(symbol, timeframe)
                if self.exchange_id in FRAME_READERS:
                    queue = exchange.updates.get(key)
                    updates = list(queue or ())
                    if queue:
                        queue.clear()
                else:
                    updates = self._inferred(key, candles)
                if updates:
                    return updates
        except AppError:
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # CCXT cancels its futures when a connection is closed under them (reset_silent)
            raise NetworkPluginError(f"{self.exchange_id} stream closed") from None
        except ccxtpro.BaseError as exc:
            raise translate(exc, self.exchange_id) from exc
        except (OSError, ValueError) as exc:
            raise NetworkPluginError(f"{self.exchange_id} stream failed: {exc}") from exc

    def _inferred(self, key: tuple[str, str], candles: list[list[Any]]) -> list[KlineUpdate]:
        """Updates from CCXT's parsed candles: a bar is closed once a later one arrived."""
        out: list[KlineUpdate] = []
        for row in candles:
            bar: Bar = [int(row[0]), *(_finite(v) for v in row[1:6])]
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
        if exchange is not None:
            try:
                await exchange.close()
            except (ccxtpro.BaseError, OSError) as exc:
                log.warning("%s stream: close failed: %s", self.exchange_id, exc)
