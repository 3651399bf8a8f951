"""``/api/v1/ws``: live candles over WebSocket (protocol in docs/api.md), a thin adapter over
SubscriptionService.

Every client message is validated with a schema from ``ws_schemas``; a bad one is answered with an
``error`` frame and the connection stays open. Errors become frames in one place
(``error_frame``). The handler reads the client's messages (handled in order by a task that lives
while some wait) until the connection ends or is dropped, then closes with the connection's drop
code (1013 for a client too slow for its stream or whose writes stall, or that sends faster than
its messages are handled; 1011 on a bug; 1001 at shutdown). Frames go out through Quart's
``websocket.send`` (the ASGI send; the server frames them, and deflates them when the client
negotiated permessage-deflate), each connection's in order from a task that lives while some wait,
so the hub's fan-out never waits on a client. Dead idle peers are found by the server's WebSocket
pings: serve with ``hypercorn_options(config)`` or ``uvicorn_options(config)``
(``blueprints/ws_server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from marshmallow import ValidationError
from quart import Blueprint, current_app, websocket

from app_extensions.ratelimit import get_ratelimiter
from app_extensions.services import get_services
from blueprints import ws_auth
from blueprints.ws_schemas import SCHEMAS
from blueprints.ws_server import hypercorn_options, uvicorn_options
from core.errors import AppError, InvalidParameter
from services.bus.broadcast import stop_task
from services.live import SubscriptionService
from services.live.connection import Connection

log = logging.getLogger(__name__)
websocket_blueprint = Blueprint("websocket", __name__, url_prefix="/api/v1")
CLOSE_INTERNAL_ERROR = 1011
#: After the server's close frame, the client's messages are read and dropped this long at most,
#: until its close frame or its disconnect (the closing handshake: the server closes the TCP
#: connection once the client has answered, RFC 6455 7.1.1).
CLOSE_DRAIN_SECONDS = 5.0
__all__ = ["hypercorn_options", "uvicorn_options", "websocket_blueprint"]

ws_auth.init_ws_auth(websocket_blueprint)

class InvalidMessage(AppError):
    """The frame is not a JSON object with a known ``op``, or is too large. Fix the client."""

    status, code = 400, "invalid_message"


class UpgradeRequired(AppError):
    """A plain HTTP request on the WebSocket endpoint. Open it with a WebSocket client."""

    status, code = 426, "upgrade_required"


def error_frame(exc: AppError, req_id: Any) -> dict[str, Any]:
    """The one mapping of service errors to ``error`` frames (codes as in REST)."""
    frame: dict[str, Any] = {"type": "error", "id": req_id, "code": exc.code, "message": exc.message}
    if exc.details and exc.status < 500:
        frame["details"] = exc.details
    return frame


def _parse(raw: str | bytes | Oversized | None, max_bytes: int) -> dict[str, Any]:
    if isinstance(raw, Oversized):
        raise InvalidMessage(f"message larger than {max_bytes} bytes")
    if not isinstance(raw, str):  # bytes, or None: Quart reads an empty binary frame as None
        raise InvalidMessage("binary frames are not supported: send JSON text frames")
    if len(raw) > max_bytes or len(raw.encode()) > max_bytes:
        raise InvalidMessage(f"message larger than {max_bytes} bytes")
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        raise InvalidMessage(f"message is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # deeply nested arrays/objects: the parser gives up
        raise InvalidMessage("message is nested too deeply") from exc
    if not isinstance(msg, dict):
        raise InvalidMessage("message must be a JSON object")
    return msg


def _echo_id(msg: dict[str, Any]) -> Any:
    value = msg.get("id")
    if isinstance(value, bool):
        return None
    ok = isinstance(value, int) or (isinstance(value, str) and len(value) <= 64)
    return value if ok else None


async def handle_message(service: SubscriptionService, conn: Connection,
                         raw: str | bytes | Oversized | None, max_bytes: int) -> None:
    """Validate one client message and call the service; errors are answered as frames."""
    req_id: Any = None
    try:
        msg = _parse(raw, max_bytes)
        req_id = _echo_id(msg)
        op = msg.get("op")
        schema = SCHEMAS.get(op) if isinstance(op, str) else None
        if schema is None:
            raise InvalidMessage(f"op must be one of {', '.join(SCHEMAS)}")
        try:
            data = schema.load(msg)
        except ValidationError as exc:
            details = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            summary = "; ".join(f"{k}: {v[0] if isinstance(v, list) else v}" for k, v in details.items())
            raise InvalidParameter(summary, details=details) from exc
        if data["op"] == "auth":
            await ws_auth.authenticate(conn, data)
        elif ws_auth.refuse_unauthenticated(conn):
            return
        elif data["op"] == "ping":
            conn.send_frame({"type": "pong", "id": req_id})
        elif data["op"] == "subscribe":
            await service.subscribe(conn, data)
        else:
            await service.unsubscribe(conn, data["channel"], req_id)
    except AppError as exc:
        if ws_auth.refuse_unauthenticated(conn):  # anything but a good auth message first: 1008
            return
        if exc.status >= 500:
            log.warning("ws %s: %s", exc.code, exc.message)
        conn.send_frame(error_frame(exc, req_id))
    except Exception as exc:  # a bug: log the trace, answer internal_error, keep the connection
        log.error("unhandled error on a WebSocket message", exc_info=exc)
        conn.send_frame(error_frame(AppError("internal error"), req_id))


class Oversized:
    """Stands for a received message over the size limit (its payload is not kept)."""


OVERSIZED = Oversized()


async def _read_loop(service: SubscriptionService, conn: Connection, max_bytes: int,
                     max_pending: int) -> None:
    """Receive at once into a bounded inbox, handle messages in order: a client sending faster
    than its messages are handled is dropped (``flood``, 1013) instead of queueing without end.
    The handling task lives only while messages wait (an idle connection holds none)."""
    inbox: list[str | bytes | Oversized | None] = []
    worker: list[asyncio.Task[None]] = []  # the running one (a finished task is let go)

    def forget(task: asyncio.Task[None]) -> None:
        if task in worker:
            worker.remove(task)

    try:
        while True:
            # None for an empty binary frame: Quart takes ``event["bytes"] or event["text"]``
            raw: str | bytes | None = await websocket.receive()
            if len(inbox) >= max_pending:
                conn.drop("flood")  # interrupts this loop at its next wait
                continue
            inbox.append(OVERSIZED if raw is not None and len(raw) > max_bytes else raw)
            if not worker or worker[0].done():
                # (no local name for it: this frame would keep the finished task)
                worker[:] = [asyncio.create_task(_handle_all(service, conn, inbox, max_bytes),
                                                 name="ws-messages")]
                worker[0].add_done_callback(forget)
    finally:
        if worker:
            await stop_task(worker[0])


async def _handle_all(service: SubscriptionService, conn: Connection,
                      inbox: list[str | bytes | Oversized | None], max_bytes: int) -> None:
    me = asyncio.current_task()
    try:
        while inbox:
            await handle_message(service, conn, inbox.pop(0), max_bytes)
            if me is not None and me.cancelling():
                # A library below swallowed our cancellation (seen in redis-py): the connection
                # must still end, or its socket and tasks are held for good.
                raise asyncio.CancelledError
    except Exception as exc:  # a bug: end the connection with 1011
        log.error("WebSocket task failed", exc_info=exc)
        conn.drop("internal_error", CLOSE_INTERNAL_ERROR)


@websocket_blueprint.route("/ws", methods=["GET"])
async def ws_without_upgrade() -> Any:
    """A plain HTTP request on the WebSocket's path: 426 with the upgrade it needs."""
    error = UpgradeRequired("/api/v1/ws is a WebSocket endpoint: open it with a WebSocket "
                            "upgrade (Upgrade: websocket), e.g. new WebSocket('ws://host/api/v1/ws')")
    return error.to_dict(), error.status, {"Upgrade": "websocket"}  # RFC 9110 15.5.22


@websocket_blueprint.websocket("/ws")
async def ws() -> None:
    cfg = current_app.config
    service = get_services(current_app).subscriptions
    client = get_ratelimiter(current_app).client_identity(websocket.headers, websocket.remote_addr)
    # Raises TooManyConnections before the accept: the handshake is answered 429.
    conn = service.connect(websocket.send, client)
    auth_timer = ws_auth.at_handshake(conn)
    try:
        await websocket.accept()
        async with conn.until_dropped():
            await _read_loop(service, conn, int(cfg["WS_MAX_MESSAGE_BYTES"]),
                             int(cfg["WS_MAX_PENDING_MESSAGES"]))
    finally:
        if auth_timer is not None:
            auth_timer.cancel()
        await conn.close()
        await service.disconnect(conn)
    if conn.drop_reason is not None:
        # OSError: the peer is gone already (Uvicorn raises ClientDisconnected, an OSError)
        with contextlib.suppress(OSError):
            await websocket.close(conn.close_code, conn.drop_reason)
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(CLOSE_DRAIN_SECONDS):
                while True:
                    await websocket.receive()
