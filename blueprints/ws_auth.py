"""WebSocket auth beyond the handshake: the key in the first message, and keys re-checked while
their connections stay open (issues 23.5 and 23.6).

With auth on, a client presents its key in the handshake (``X-API-Key``; ``?api_key=`` is still
read for old clients, but a URL ends up in proxy logs) or, when it sent none there, as its first
message: ``{"op": "auth", "api_key": "<key>"}`` (``id`` optional). No success frame is sent: the
client sends its subscribes right after (messages are handled in order). A wrong key, any other
message first, or no ``auth`` within ``AUTH_TIMEOUT_SECONDS`` closes the connection with 1008
(policy violation, reason ``unauthorized``). With auth off an ``auth`` message is ignored.

Every ``WS_AUTH_RECHECK_SECONDS`` one background task reads, in one query, which of the keys of
the open connections are still valid (``ApiKeyAuth.valid_digests``, not its cache): the
connections of a key revoked (or removed) since are closed with 1008 (reason ``key_revoked``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from quart import Blueprint, current_app, g, websocket

from app_extensions.auth import get_auth, hash_key, websocket_key
from app_extensions.services import get_services
from core.errors import Unauthorized
from services.bus.broadcast import stop_task
from services.live.connection import Connection

log = logging.getLogger(__name__)
#: Close code of a connection whose key is missing, wrong, or revoked (RFC 6455: policy violation).
CLOSE_POLICY = 1008
#: How long a connection without a key in its handshake has to send ``{"op": "auth"}``.
AUTH_TIMEOUT_SECONDS = 10.0
#: Key of the re-check task in ``app.extensions``.
RECHECK_TASK = "ws_key_recheck"


def at_handshake(conn: Connection) -> asyncio.TimerHandle | None:
    """With auth on: keep the digest of the handshake's key (for the re-checks), or, when none
    was presented, mark the connection as waiting for its ``auth`` message and return the timer
    that closes it if none comes (the caller cancels it when the connection ends)."""
    if not get_auth(current_app).enabled:
        return None
    presented = websocket_key()
    if presented is not None:  # checked by the before_websocket hook already
        conn.key = hash_key(presented)
        return None
    conn.auth_pending = True

    def expire() -> None:
        if conn.auth_pending:
            conn.drop("unauthorized", CLOSE_POLICY)

    return asyncio.get_running_loop().call_later(AUTH_TIMEOUT_SECONDS, expire)


async def authenticate(conn: Connection, msg: dict[str, Any]) -> None:
    """An ``auth`` message: check its key (the brute-force guard counts a wrong one); a wrong key
    closes the connection with 1008. Other errors (the guard's 429, the database down) raise."""
    auth = get_auth(current_app)
    if not auth.enabled:
        return
    try:
        key_id = await auth.authenticate(msg["api_key"], (websocket.headers, websocket.remote_addr))
    except Unauthorized:
        conn.drop("unauthorized", CLOSE_POLICY)
        return
    conn.key, conn.auth_pending = hash_key(msg["api_key"]), False
    g.api_key_id = key_id


def refuse_unauthenticated(conn: Connection) -> bool:
    """True (and the connection closed with 1008) when it sends a message before its ``auth``."""
    if conn.auth_pending:
        conn.drop("unauthorized", CLOSE_POLICY)
        return True
    return False


async def recheck_keys() -> None:
    """Background task (``WS_AUTH_RECHECK_SECONDS``): close the connections of keys no longer
    valid. A failed check (the database down) is logged and tried again next time."""
    every = float(current_app.config["WS_AUTH_RECHECK_SECONDS"])
    auth, service = get_auth(current_app), get_services(current_app).subscriptions
    while True:
        await asyncio.sleep(every)
        digests = {conn.key for conn in service.connections if conn.key is not None}
        if not digests:
            continue
        try:
            valid = await auth.valid_digests(digests)
        except Exception as exc:  # a loop that must go on: log, try again next time
            log.warning("re-checking the keys of open WebSockets failed: %s", exc, exc_info=True)
            continue
        for conn in list(service.connections):
            if conn.key is not None and conn.key not in valid:
                conn.drop("key_revoked", CLOSE_POLICY)


def init_ws_auth(blueprint: Blueprint) -> None:
    """Run ``recheck_keys`` while the app serves, when auth is on with keys in the database (keys
    of ``API_KEYS`` change only with a restart)."""

    @blueprint.before_app_serving
    async def _start_recheck() -> None:
        auth = get_auth(current_app)
        if auth.enabled and auth.use_db:
            current_app.extensions[RECHECK_TASK] = asyncio.create_task(recheck_keys(),
                                                                       name="ws-key-recheck")

    @blueprint.after_app_serving
    async def _stop_recheck() -> None:
        task = current_app.extensions.pop(RECHECK_TASK, None)
        if task is not None:
            await stop_task(task)
