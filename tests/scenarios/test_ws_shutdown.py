"""Shutdown: a serving entry point whose shutdown trigger calls ``going_away`` closes WebSocket
clients with 1001 (Hypercorn alone ends them with 1011 or 1006 after its graceful timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from app import create_app
from app_extensions.services import get_services
from tests.support.ws import WS_TEST_CONFIG, Client, free_port, wait_for


async def test_going_away_closes_clients_with_1001_before_the_server_stops(
        app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG})
    hc = HypercornConfig()
    port = free_port()
    hc.bind, hc.graceful_timeout, hc.accesslog = [f"127.0.0.1:{port}"], 1.0, None
    stop = asyncio.Event()

    async def trigger() -> None:
        await stop.wait()
        await get_services(app).subscriptions.going_away(drain_seconds=2.0)

    server = asyncio.create_task(serve(app, hc, shutdown_trigger=trigger))  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as session:
            async def up() -> bool:
                try:
                    c = await Client(session, f"ws://127.0.0.1:{port}/api/v1/ws").open()
                except aiohttp.ClientError:
                    return False
                clients.append(c)
                return True

            clients: list[Client] = []
            await wait_for(up, within=20)
            client = clients[0]
            await client.send({"op": "subscribe", "market": "sim", "provider": "sim",
                               "symbol": "SIM/USD", "history": 1})
            await wait_for(lambda: client.of("snapshot"))
            stop.set()
            assert client._task is not None
            await asyncio.wait_for(client._task, 5)
            assert client.close_code == 1001
    finally:
        stop.set()
        await asyncio.wait_for(server, 20)
