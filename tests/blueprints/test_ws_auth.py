"""WebSocket auth without URLs (issue 23.5): the key in the X-API-Key header or in a first
{"op": "auth"} message; a revoked key's open connections are closed with 1008 (issue 23.6)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from quart import Quart
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError

from app import create_app
from app_extensions.auth import hash_key
from app_extensions.services import get_services
from blueprints import ws_auth
from tests.conftest import DATABASE_URL
from tests.support.ws import WS_TEST_CONFIG, wait_for

GOOD, WRONG = "k-good-0123456789", "k-wrong-0123456789"
PING = json.dumps({"op": "ping", "id": 1})


@pytest.fixture
async def auth_app(app_config: dict[str, Any]) -> AsyncIterator[Quart]:
    app = create_app({**app_config, **WS_TEST_CONFIG, "AUTH_ENABLED": True,
                      "API_KEYS": [hash_key(GOOD)], "API_KEYS_FROM_DB": False})
    async with app.test_app():
        yield app


async def closed_with(ws: Any) -> int:
    """The close code the server ends the connection with (within 5 s)."""
    with pytest.raises(WebsocketDisconnectError) as closed:
        async with asyncio.timeout(5):
            while True:
                await ws.receive()
    return int(closed.value.args[0])


async def test_the_key_in_the_first_message_opens_the_connection(auth_app: Quart) -> None:
    async with auth_app.test_client().websocket("/api/v1/ws") as ws:  # no key in the handshake
        await ws.send(json.dumps({"op": "auth", "api_key": GOOD}))
        await ws.send(PING)
        assert json.loads(await asyncio.wait_for(ws.receive(), 5)) == {"type": "pong", "id": 1}
        (conn,) = get_services(auth_app).subscriptions.connections
        assert conn.key == hash_key(GOOD) and not conn.auth_pending


@pytest.mark.parametrize("first", [
    json.dumps({"op": "auth", "api_key": WRONG}),  # a wrong key
    PING,  # anything else first
    json.dumps({"op": "auth"}),  # no key
    "not json",
])
async def test_no_good_auth_message_first_closes_with_1008(auth_app: Quart, first: str) -> None:
    async with auth_app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(first)
        assert await closed_with(ws) == 1008


async def test_no_auth_message_in_time_closes_with_1008(
    auth_app: Quart, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_auth, "AUTH_TIMEOUT_SECONDS", 0.2)
    async with auth_app.test_client().websocket("/api/v1/ws") as ws:
        assert await closed_with(ws) == 1008


async def test_the_header_key_still_works_and_a_wrong_one_is_refused_at_the_handshake(auth_app: Quart) -> None:
    client = auth_app.test_client()
    async with client.websocket("/api/v1/ws", headers={"X-API-Key": GOOD}) as ws:
        await ws.send(PING)  # no auth message needed
        assert json.loads(await asyncio.wait_for(ws.receive(), 5)) == {"type": "pong", "id": 1}
    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket("/api/v1/ws", headers={"X-API-Key": WRONG}) as ws:
            await ws.receive()
    assert refused.value.response.status_code == 401


async def test_with_auth_off_an_auth_message_is_ignored(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG})
    async with app.test_app(), app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(json.dumps({"op": "auth", "api_key": "anything"}))
        await ws.send(PING)
        assert json.loads(await asyncio.wait_for(ws.receive(), 5)) == {"type": "pong", "id": 1}


async def test_a_revoked_key_closes_its_open_connections_with_1008(
    app_config: dict[str, Any], db_schema: str
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "AUTH_ENABLED": True,
                      "API_KEYS_FROM_DB": True, "WS_AUTH_RECHECK_SECONDS": 0.2})
    async with app.test_app():
        pg = await asyncpg.connect(DATABASE_URL)
        try:
            for name, key in (("revoked", GOOD), ("kept", WRONG)):
                await pg.execute(f'INSERT INTO "{db_schema}".api_keys (name, key_hash) VALUES ($1, $2)',
                                 name, hash_key(key))
            client = app.test_client()
            async with client.websocket("/api/v1/ws", headers={"X-API-Key": GOOD}) as header, \
                    client.websocket("/api/v1/ws") as message, \
                    client.websocket("/api/v1/ws", headers={"X-API-Key": WRONG}) as kept:
                await message.send(json.dumps({"op": "auth", "api_key": GOOD}))
                for ws in (header, message, kept):
                    await ws.send(PING)
                    assert json.loads(await asyncio.wait_for(ws.receive(), 5))["type"] == "pong"
                await pg.execute(f'UPDATE "{db_schema}".api_keys SET revoked_at = now() WHERE name = $1',
                                 "revoked")
                assert await closed_with(header) == 1008
                assert await closed_with(message) == 1008
                await kept.send(PING)  # another key's connection stays open
                assert json.loads(await asyncio.wait_for(kept.receive(), 5))["type"] == "pong"
                service = get_services(app).subscriptions
                await wait_for(lambda: len(service.connections) == 1)
        finally:
            await pg.close()
