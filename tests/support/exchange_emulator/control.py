"""HTTP control API of the emulator, for when it runs as a separate process.

| method and path | body / query | effect |
| --- | --- | --- |
| ``GET /__emulator/requests`` | ``path`` (optional, exact or fnmatch) | ``{"count", "requests"}`` |
| ``GET /__emulator/faults`` | | pending faults |
| ``POST /__emulator/faults`` | ``{"path", "status"?, "times"?, "retry_after"?, ...}`` (1) | 201 |
| ``DELETE /__emulator/faults`` | ``path`` (optional) | clears faults |
| ``POST /__emulator/maintenance`` | ``{"start", "end"}`` (ms) | no candles in [start, end) |
| ``DELETE /__emulator/maintenance`` | | clears windows |
| ``POST /__emulator/settings`` | ``{"latency"?, "now"?, "alpaca_page_size"?,
  "add_binance_symbols"?}`` (N more ``X001USDT``... pairs) | |
| ``POST /__emulator/reset`` | | faults, log, maintenance, settings back to defaults |
| ``POST /__emulator/revise`` | ``{"symbol", "ts", "open"?, "high"?, "low"?, "close"?, "volume"?,
  "announce"?}`` (2) | 201 ``{"symbol", "ts", "bar"}`` |
| ``DELETE /__emulator/revise`` | | every bar back to its original values |
| ``GET /__emulator/weights`` | | weight used, limit, window, 429/418 counts, ban |
| ``POST /__emulator/weights`` | ``{"limit"?, "window"?, "ban_after"?, "ban_seconds"?}`` (3) | |
| ``GET /__emulator/stream`` | | stream switches, connections, subscriptions, frames sent |
| ``POST /__emulator/stream`` | ``{"interval"?, "stalled"?, "refuse"?, "malformed"?,
  "malformed_kind"?, "diverge"?, "drop"?}`` (4) | |

(1) the fields of ``faults.Fault``: also ``delay``, ``drop``, ``malformed``.
(2) a closed 1m bar (exchange symbol id, minute open time in ms) gets other values, as an exchange
correcting a bar does; no value given: close +0.1 %, volume +50 %. REST klines and bars (and every
interval over it) answer the new values; ``announce`` also pushes it on the 1m streams.
(3) Binance weight enforcement (``weights.py``): ``limit`` per ``window`` seconds (null: counted in
``X-MBX-USED-WEIGHT-1M`` but not enforced), 429 past it, 418 bans for clients that keep going.
(4) ``streams.py``: ``interval`` seconds between pushes (Binance 2), ``stalled`` sends nothing,
``refuse`` answers handshakes 503, ``malformed``/``diverge`` break the next N frames / closed bars,
``drop: true`` aborts every open stream connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .faults import Fault
from .streams import MALFORMED_FRAMES

if TYPE_CHECKING:
    from .server import ExchangeEmulator

_FAULT_FIELDS = {"path", "status", "times", "retry_after", "delay", "drop", "malformed"}


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


class ControlRoutes:
    def __init__(self, emulator: ExchangeEmulator) -> None:
        self.emu = emulator

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/__emulator/requests", self.requests)
        r.add_get("/__emulator/faults", self.list_faults)
        r.add_post("/__emulator/faults", self.add_fault)
        r.add_delete("/__emulator/faults", self.clear_faults)
        r.add_post("/__emulator/maintenance", self.add_maintenance)
        r.add_delete("/__emulator/maintenance", self.clear_maintenance)
        r.add_post("/__emulator/settings", self.settings)
        r.add_post("/__emulator/reset", self.reset)
        r.add_post("/__emulator/revise", self.revise)
        r.add_delete("/__emulator/revise", self.clear_revisions)
        r.add_get("/__emulator/weights", self.get_weights)
        r.add_post("/__emulator/weights", self.set_weights)
        r.add_get("/__emulator/stream", self.get_stream)
        r.add_post("/__emulator/stream", self.set_stream)

    async def requests(self, request: web.Request) -> web.Response:
        records = self.emu.requests(request.query.get("path"))
        return web.json_response({"count": len(records),
                                  "requests": [r.to_dict() for r in records]})

    async def list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": [f.to_dict() for f in self.emu.faults.faults]})

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await _json(request)
        unknown = set(body) - _FAULT_FIELDS
        if unknown or "path" not in body:
            raise web.HTTPBadRequest(text=f"need path; unknown fields: {sorted(unknown)}")
        try:
            fault = self.emu.faults.add(Fault(**body))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return web.json_response(fault.to_dict(), status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.emu.clear_faults(request.query.get("path"))
        return web.json_response({"faults": []})

    async def add_maintenance(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            self.emu.add_maintenance(int(body["start"]), int(body["end"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"need integer start < end: {exc}") from exc
        return web.json_response({"maintenance": self.emu.book.maintenance}, status=201)

    async def clear_maintenance(self, request: web.Request) -> web.Response:
        self.emu.book.maintenance.clear()
        return web.json_response({"maintenance": []})

    async def settings(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            if "latency" in body:
                self.emu.latency = float(body["latency"])
            if "now" in body:
                self.emu.now_ms = None if body["now"] is None else int(body["now"])
            if "alpaca_page_size" in body:
                self.emu.alpaca.page_size = int(body["alpaca_page_size"])
            if "add_binance_symbols" in body:
                self.emu.binance.add_symbols(int(body["add_binance_symbols"]))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return web.json_response({"latency": self.emu.latency, "now": self.emu.now_ms,
                                  "alpaca_page_size": self.emu.alpaca.page_size,
                                  "binance_symbols": len(self.emu.binance.symbols)})

    async def reset(self, request: web.Request) -> web.Response:
        self.emu.reset()
        return web.json_response({"reset": True})

    async def revise(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            symbol, ts = str(body.pop("symbol")), int(body.pop("ts"))
            announce = bool(body.pop("announce", False))
            candle = self.emu.revise(symbol, ts, announce,
                                     **{k: float(v) for k, v in body.items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"need symbol, ts and bar fields: {exc}") from exc
        return web.json_response({"symbol": symbol, "ts": ts, "bar": list(candle)}, status=201)

    async def clear_revisions(self, request: web.Request) -> web.Response:
        self.emu.book.clear_revisions()
        return web.json_response({"revised": []})

    async def get_weights(self, request: web.Request) -> web.Response:
        return web.json_response(self.emu.weights.to_dict())

    async def set_weights(self, request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            self.emu.weights.configure(**body)
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return web.json_response(self.emu.weights.to_dict())

    async def get_stream(self, request: web.Request) -> web.Response:
        return web.json_response(self.emu.streams.to_dict())

    async def set_stream(self, request: web.Request) -> web.Response:
        body = await _json(request)
        streams = self.emu.streams
        unknown = set(body) - {"interval", "stalled", "refuse", "malformed", "malformed_kind",
                               "diverge", "drop"}
        kind = body.get("malformed_kind", streams.malformed_kind)
        try:
            interval = float(body.get("interval", streams.interval))
            malformed, diverge = int(body.get("malformed", 0)), int(body.get("diverge", 0))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if unknown or kind not in MALFORMED_FRAMES or not 0 < interval <= 60:
            raise web.HTTPBadRequest(text=f"unknown fields {sorted(unknown)}, malformed_kind in "
                                     f"{sorted(MALFORMED_FRAMES)}, 0 < interval <= 60")
        streams.interval, streams.malformed_kind = interval, kind
        streams.stalled = bool(body.get("stalled", streams.stalled))
        streams.refuse = bool(body.get("refuse", streams.refuse))
        streams.malformed += malformed
        streams.diverge += diverge
        dropped = streams.drop() if body.get("drop") else 0
        streams.notify()
        return web.json_response({**streams.to_dict(), "dropped": dropped})
