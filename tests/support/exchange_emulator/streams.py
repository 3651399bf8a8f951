"""Binance spot kline WebSocket streams, as CCXT Pro's ``binance`` client speaks them.

Endpoints (https://developers.binance.com, "WebSocket Streams"):

- ``/ws/<symbol>@kline_<interval>``: one raw stream; events arrive unwrapped;
- ``/stream?streams=<a>/<b>``: combined streams; events arrive as ``{"stream", "data"}``;
- ``/ws``, ``/ws/<anything without @>`` (CCXT Pro dials ``/ws/0``, ``/ws/1``...) with no stream
  until the client sends ``{"method": "SUBSCRIBE", "params": [...], "id": N}`` (answered
  ``{"result": null, "id": N}``); ``UNSUBSCRIBE`` and ``LIST_SUBSCRIPTIONS`` work on every
  connection, unknown methods and bad stream names answer Binance's ``{"error": {...}, "id"}``.

Each subscribed stream pushes the kline event (``{"e": "kline", "E", "s", "k": {...}}``, ``k.x``
true for a closed bar) of its current bucket every ``interval`` seconds (Binance: 2 s; tests set
it lower), right after a subscription, whenever the clock crosses a bucket boundary, and when the
emulator is told that something changed (``notify``: a new frozen "now", a revision). When a
bucket ends the stream first sends that bucket's final values with ``x: true``.

Faults (``ExchangeEmulator.streams`` or ``POST /__emulator/stream``): ``drop()`` aborts every open
stream connection; ``refuse`` answers new handshakes 503; ``stalled`` keeps connections open but
sends nothing; ``malformed`` replaces the next N event frames with broken ones (``"invalid"``: not
JSON; ``"json"``: a kline event without its bar); ``diverge`` sends the next N closed bars with
values that differ from REST (the close moved up 1 %); ``announce`` pushes a revised 1m bar again
as a closed kline (as Coinbase re-sends a timestamp with other values).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .binance import INTERVALS, kline_row
from .candles import Candle, CandleBook, bucket_of

MALFORMED_FRAMES = {"invalid": '{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":17',
                    "json": '{"e":"kline","E":1,"s":"BTCUSDT","k":{"i":"1m","x":true}}'}


@dataclass
class KlineSub:
    name: str
    symbol: str
    interval: str
    size: int
    last_open: int | None = None


@dataclass(eq=False)
class StreamConn:
    ws: web.WebSocketResponse
    request: web.Request
    combined: bool
    subs: dict[str, KlineSub] = field(default_factory=dict)
    outbox: list[tuple[KlineSub, Candle, bool]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def parse_stream(name: str, symbols: Mapping[str, object]) -> KlineSub | None:
    """``btcusdt@kline_1m`` as a subscription, or None when it is not a served kline stream."""
    symbol, _, rest = name.partition("@kline_")
    if symbol.upper() not in symbols or symbol != symbol.lower() or rest not in INTERVALS:
        return None
    return KlineSub(name, symbol.upper(), rest, INTERVALS[rest])


class BinanceStreams:
    """The stream endpoints of one emulator, with their fault switches."""

    def __init__(self, book: CandleBook, symbols: Mapping[str, object]) -> None:
        self.book, self.symbols = book, symbols
        self.conns: set[StreamConn] = set()
        self.reset()

    def reset(self) -> None:
        """Faults off, Binance's 2 s push interval, counters zeroed (connections stay)."""
        self.interval = 2.0
        self.stalled = False
        self.refuse = False
        self.malformed = 0
        self.malformed_kind = "invalid"
        self.diverge = 0
        self.frames_sent = 0
        self.handshakes = 0
        #: Every client message (parsed JSON requests) received, in order.
        self.messages: list[Any] = []
        #: (symbol, interval, open time) of every closed bar sent with values that differ from REST.
        self.diverged: list[tuple[str, str, int]] = []

    def register(self, app: web.Application) -> None:
        app.router.add_get("/ws", self.handler)
        app.router.add_get("/ws/{name}", self.handler)
        app.router.add_get("/stream", self.handler)

    # --- Test controls ---------------------------------------------------------------------------
    def drop(self) -> int:
        """Abort every open stream connection (a network cut); returns how many."""
        conns = list(self.conns)
        for conn in conns:
            if conn.request.transport is not None:
                conn.request.transport.abort()
        return len(conns)

    def notify(self) -> None:
        """Push now on every connection (the book changed)."""
        for conn in self.conns:
            conn.wake.set()

    def announce(self, symbol: str, candle: Candle) -> None:
        """Send ``candle`` (a revised 1m bar) as a closed kline to the 1m streams of ``symbol``."""
        for conn in self.conns:
            for sub in conn.subs.values():
                if sub.symbol == symbol and sub.interval == "1m":
                    conn.outbox.append((sub, candle, True))
            conn.wake.set()

    def subscriptions(self) -> list[str]:
        return sorted(name for conn in self.conns for name in conn.subs)

    # --- Connections -------------------------------------------------------------------------------
    async def handler(self, request: web.Request) -> web.StreamResponse:
        if self.refuse:
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.handshakes += 1
        conn = StreamConn(ws, request, combined=request.path == "/stream")
        names = request.query.get("streams", "").split("/") if conn.combined else [
            request.match_info.get("name", "")]
        for name in names:
            sub = parse_stream(name, self.symbols)
            if sub is not None:
                conn.subs[name] = sub
        self.conns.add(conn)
        conn.wake.set()
        pusher = asyncio.create_task(self._push_loop(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(json.dumps(self._on_request(conn, msg.data)))
        except ConnectionError:
            pass  # the client went away while we answered: nothing more to do
        finally:
            self.conns.discard(conn)
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
        return ws

    def _on_request(self, conn: StreamConn, text: str) -> dict[str, Any]:
        try:
            req = json.loads(text)
        except ValueError:
            return {"error": {"code": 3, "msg": "Invalid JSON: expected value"}, "id": None}
        self.messages.append(req)
        if not isinstance(req, dict):
            return {"error": {"code": 3, "msg": "Invalid JSON: expected an object"}, "id": None}
        rid, method, params = req.get("id"), req.get("method"), req.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": sorted(conn.subs), "id": rid}
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
            return {"error": {"code": 2, "msg": f"Invalid request: unknown variant {method!r}"},
                    "id": rid}
        subs = [parse_stream(p, self.symbols) if isinstance(p, str) else None for p in params]
        if any(s is None for s in subs):
            return {"error": {"code": 2, "msg": "Invalid request: invalid stream name"},
                    "id": rid}
        for sub in subs:
            assert sub is not None
            if method == "SUBSCRIBE":
                conn.subs.setdefault(sub.name, sub)
            else:
                conn.subs.pop(sub.name, None)
        conn.wake.set()
        return {"result": None, "id": rid}

    # --- Pushing -------------------------------------------------------------------------------------
    def _timeout(self, conn: StreamConn) -> float:
        """Seconds until the next periodic push or the next bucket boundary, if sooner."""
        if self.book.now_ms is not None or not conn.subs:
            return self.interval
        now = time.time() * 1000
        size = min(sub.size for sub in conn.subs.values())
        return min(self.interval, (size - now % size) / 1000 + 0.002)

    async def _push_loop(self, conn: StreamConn) -> None:
        while not conn.ws.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.wake.wait(), self._timeout(conn))
            conn.wake.clear()
            if self.stalled:
                continue
            try:
                for frame in self._frames(conn):
                    await conn.ws.send_str(frame)
                    self.frames_sent += 1
            except ConnectionError:
                return

    def _frames(self, conn: StreamConn) -> list[str]:
        events: list[tuple[KlineSub, Candle, bool]] = conn.outbox
        conn.outbox = []
        now = self.book.now()
        for sub in list(conn.subs.values()):
            current = bucket_of(now, sub.size)
            if sub.last_open is not None and sub.last_open < current:
                closed = self.book.bucket(sub.symbol, False, sub.size, sub.last_open)
                if closed is not None:
                    events.append((sub, closed, True))
            candle = self.book.bucket(sub.symbol, False, sub.size, current)
            if candle is not None:
                events.append((sub, candle, False))
                sub.last_open = current
        return [self._encode(conn, sub, candle, closed) for sub, candle, closed in events]

    def _encode(self, conn: StreamConn, sub: KlineSub, candle: Candle, closed: bool) -> str:
        if self.malformed > 0:
            self.malformed -= 1
            return MALFORMED_FRAMES[self.malformed_kind]
        if closed and self.diverge > 0:
            self.diverge -= 1
            ts, o, h, low, c, v = candle
            candle = (ts, o, max(h, c * 1.01), low, c * 1.01, v)
            self.diverged.append((sub.symbol, sub.interval, ts))
        row = kline_row(candle, sub.size)
        event = {"e": "kline", "E": int(time.time() * 1000), "s": sub.symbol, "k": {
            "t": row[0], "T": row[6], "s": sub.symbol, "i": sub.interval, "f": row[0] // 1000,
            "L": row[0] // 1000 + row[8], "o": row[1], "c": row[4], "h": row[2], "l": row[3],
            "v": row[5], "n": row[8], "x": closed, "q": row[7], "V": row[9], "Q": row[10],
            "B": "0"}}
        return json.dumps({"stream": sub.name, "data": event} if conn.combined else event)

    def to_dict(self) -> dict[str, Any]:
        return {"interval": self.interval, "stalled": self.stalled, "refuse": self.refuse,
                "malformed": self.malformed, "malformed_kind": self.malformed_kind,
                "diverge": self.diverge, "connections": len(self.conns),
                "subscriptions": self.subscriptions(), "frames_sent": self.frames_sent,
                "handshakes": self.handshakes, "diverged": [list(d) for d in self.diverged]}
