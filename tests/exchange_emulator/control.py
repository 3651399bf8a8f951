"""HTTP control API of the emulator, for when it runs as a separate process.

| method and path | body / query | effect |
| --- | --- | --- |
| ``GET /__emulator/requests`` | ``path`` (optional, exact or fnmatch) | ``{"count", "requests"}`` |
| ``GET /__emulator/faults`` | | pending faults |
| ``POST /__emulator/faults`` | ``{"path", "status"?, "times"?, "retry_after"?, ...}`` (1) | 201 |
| ``DELETE /__emulator/faults`` | ``path`` (optional) | clears faults |
| ``POST /__emulator/maintenance`` | ``{"start", "end"}`` (ms) | no candles in [start, end) |
| ``DELETE /__emulator/maintenance`` | | clears windows |
| ``POST /__emulator/settings`` | ``{"latency"?, "now"?, "alpaca_page_size"?}`` | |
| ``POST /__emulator/reset`` | | faults, log, maintenance, settings back to defaults |

(1) the fields of ``faults.Fault``: also ``delay``, ``drop``, ``malformed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .faults import Fault

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
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return web.json_response({"latency": self.emu.latency, "now": self.emu.now_ms,
                                  "alpaca_page_size": self.emu.alpaca.page_size})

    async def reset(self, request: web.Request) -> web.Response:
        self.emu.reset()
        return web.json_response({"reset": True})
