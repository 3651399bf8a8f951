"""The exchange emulator: an aiohttp server on 127.0.0.1 speaking Binance spot (REST and kline
WebSocket streams) and Alpaca data v2.

Use it in-process from pytest::

    emu = ExchangeEmulator()
    await emu.start()                      # emu.url == "http://127.0.0.1:<port>"; emu.ws_url
    emu.inject("/api/v3/klines", status=429, times=2, retry_after=1)
    emu.calls("/api/v3/klines")            # requests served on that path
    emu.add_maintenance(start_ms, end_ms)  # no candles in [start, end)
    emu.revise("BTCUSDT", ts, close=1.0)   # a closed 1m bar gets other values (REST and streams)
    emu.weights.configure(limit=120)       # Binance weight enforcement: 429, then 418 bans
    emu.streams.interval = 0.1             # kline streams push every 0.1 s instead of 2 s
    emu.streams.drop()                     # ... and other stream faults (see ``streams.py``)
    await emu.stop()

or as a process (``python -m tests.support.exchange_emulator --port 9100``) driven through the control API
under ``/__emulator/`` (see ``control.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from .alpaca import AlpacaRoutes
from .binance import BinanceRoutes
from .candles import Candle, CandleBook
from .control import ControlRoutes
from .faults import Fault, FaultBook, RequestLog, RequestRecord
from .streams import BinanceStreams
from .weights import USED_WEIGHT_HEADER, WeightBook

log = logging.getLogger(__name__)
CONTROL_PREFIX = "/__emulator/"
#: Candles exist from this instant on (like a listing date); older requests answer nothing.
DEFAULT_HISTORY_START = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _fault_response(path: str, fault: Fault) -> web.Response:
    """The venue's own error body for an injected status."""
    status = fault.status or 500
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(int(fault.retry_after) if fault.retry_after >= 1
                                     else fault.retry_after)
    if path.startswith("/v2/"):
        message = {429: "too many requests", 401: "request is not authorized",
                   403: "forbidden"}.get(status, "internal server error")
        return web.json_response({"code": status * 100_000, "message": message}, status=status,
                                 headers=headers)
    if status in (418, 429):
        body = {"code": -1003, "msg": "Too many requests; please use the websocket for live"
                " updates to avoid polling the API."}
        return web.json_response(body, status=status, headers=headers)
    if status >= 500:
        # Binance's gateways answer 5xx with an HTML or plain-text page, not JSON.
        return web.Response(text=f"<html><body><h1>{status} Service Unavailable</h1></body>"
                            "</html>", status=status, content_type="text/html", headers=headers)
    if status == 403:  # Binance's WAF answers 403 with an HTML page
        return web.Response(text="<html><body><h1>403 Forbidden</h1></body></html>",
                            status=status, content_type="text/html", headers=headers)
    code, msg = {400: (-1100, "Illegal characters found in a parameter."),
                 401: (-2015, "Invalid API-key, IP, or permissions for action.")}.get(
        status, (-1000, "An unknown error occurred while processing the request."))
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


def _malformed_response(kind: str) -> web.Response:
    if kind == "json":
        return web.json_response({"status": "ok", "data": {"unexpected": True}})
    if kind == "invalid":
        return web.Response(text='[[1700000000000,"37000.1","37100', content_type="application/json")
    return web.Response(text="<html><body>gateway says hello</body></html>",
                        content_type="text/html")


class ExchangeEmulator:
    """An in-process exchange server; all state (faults, log, maintenance) is per instance."""

    def __init__(self, history_start_ms: int = DEFAULT_HISTORY_START) -> None:
        self.book = CandleBook(history_start_ms)
        self.faults = FaultBook()
        self.log = RequestLog()
        #: Seconds added to every exchange request (not control requests).
        self.latency = 0.0
        self.binance = BinanceRoutes(self.book)
        self.alpaca = AlpacaRoutes(self.book)
        self.streams = BinanceStreams(self.book, self.binance.symbols)
        self.weights = WeightBook()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- Lifecycle ---------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        self.binance.register(app)
        self.alpaca.register(app)
        self.streams.register(app)
        ControlRoutes(self).register(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        runner = web.AppRunner(self.make_app(), handler_cancellation=True, shutdown_timeout=1.0,
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("emulator not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """Base URL of the streams (``PROVIDER_WS_URLS`` value): ``ws://127.0.0.1:<port>``."""
        return "ws" + self.url.removeprefix("http")

    # --- Test API ------------------------------------------------------------------------------
    def inject(
        self,
        path: str,
        *,
        status: int | None = None,
        times: int | None = 1,
        retry_after: float | None = None,
        delay: float | None = None,
        drop: bool = False,
        malformed: str | None = None,
    ) -> Fault:
        """Make the next ``times`` requests on ``path`` (exact or fnmatch pattern) fail."""
        return self.faults.add(Fault(path, status, times, retry_after, delay, drop, malformed))

    def clear_faults(self, path: str | None = None) -> None:
        self.faults.clear(path)

    def calls(self, path: str | None = None) -> int:
        """How many exchange requests were served on ``path`` (all paths when None)."""
        return len(self.log.select(path))

    def requests(self, path: str | None = None) -> list[RequestRecord]:
        return self.log.select(path)

    def add_maintenance(self, start_ms: int, end_ms: int) -> None:
        """No candle opens in ``[start_ms, end_ms)`` for any symbol."""
        if end_ms <= start_ms:
            raise ValueError("maintenance end must be after its start")
        self.book.maintenance.append((start_ms, end_ms))

    @property
    def now_ms(self) -> int | None:
        return self.book.now_ms

    @now_ms.setter
    def now_ms(self, value: int | None) -> None:
        """Freeze the emulator's clock (ms) or follow the wall clock again (None); streams push
        the bars of the new "now" at once."""
        self.book.now_ms = value
        self.streams.notify()

    def revise(self, symbol: str, ts: int, announce: bool = False, **values: float) -> Candle:
        """Give the closed 1m bar of ``symbol`` (exchange id) at ``ts`` other values (see
        ``CandleBook.revise``): REST answers change; with ``announce`` the 1m streams of the
        symbol get it again as a closed kline. Returns the new candle."""
        candle = self.book.revise(symbol, ts, **values)
        if announce:
            self.streams.announce(symbol, candle)
        return candle

    def reset(self) -> None:
        """Forget faults, requests, maintenance windows, revisions, latency, a frozen clock, stream
        faults and weight enforcement."""
        self.faults.clear()
        self.book.clear_revisions()
        self.streams.reset()
        self.weights.configure(limit=None, window=60.0, ban_after=3, ban_seconds=120.0)
        self.log.clear()
        self.book.maintenance.clear()
        self.book.now_ms = None
        self.latency = 0.0
        self.alpaca.page_size = 10_000

    # --- Request pipeline ------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        record = self.log.add(RequestRecord(request.method, request.path, dict(request.query)))
        refusal = self.weights.admit(request.path)
        if request.path.startswith("/api/"):
            try:
                response = await self._serve(request, handler, record, refusal)
            except web.HTTPException as exc:
                exc.headers[USED_WEIGHT_HEADER] = str(self.weights.used)
                raise
            response.headers[USED_WEIGHT_HEADER] = str(self.weights.used)
            return response
        return await self._serve(request, handler, record, refusal)

    async def _serve(self, request: web.Request, handler: Handler, record: RequestRecord,
                     refusal: tuple[int, float] | None) -> web.StreamResponse:
        if refusal is not None:
            status, retry_after = refusal
            record.fault, record.status = "weight", status
            return _fault_response(request.path, Fault(request.path, status,
                                                       retry_after=max(1, math.ceil(retry_after))))
        fault = self.faults.take(request.path)
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None:
            if fault.delay:
                record.fault = "delay"
                await asyncio.sleep(fault.delay)
            if fault.drop:
                record.fault = "drop"
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # nothing can be answered on an aborted transport
            if fault.status is not None:
                record.fault, record.status = "status", fault.status
                return _fault_response(request.path, fault)
            if fault.malformed is not None:
                record.fault, record.status = f"malformed:{fault.malformed}", 200
                return _malformed_response(fault.malformed)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            record.status = exc.status
            raise
        record.status = response.status
        return response
