"""permessage-deflate under Hypercorn: the server negotiates it (issue 21: no patch, so with
wsproto's defaults, context takeover included); a browser-like client inflates every frame right,
next to a client that offered nothing, a small window is honoured, and a deflating client that
does not read is still closed with 1013."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp

from app import create_app
from app_extensions.services import get_services
from blueprints.websocket import hypercorn_options
from services.live.frames import StatusFrame
from tests.scenarios.test_ws_backpressure import RawClient
from tests.support.ws import (
    WS_TEST_CONFIG,
    assert_ts_monotonic,
    http_session,
    metric,
    serve_app,
    wait_for,
)

CHANNEL = "sim:sim:SIM/USD:1m"
SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "history": 50}


async def test_a_client_offering_deflate_gets_it_and_reads_every_frame(
    app_config: dict[str, Any]
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    service = get_services(app).subscriptions
    async with serve_app(app, **hypercorn_options(app.config)) as addr, http_session() as session:
        url = f"http://{addr}/api/v1/ws"
        deflating = await session.ws_connect(url, compress=15)  # as browsers offer it
        plain = await session.ws_connect(url)
        try:
            assert deflating.compress == 15 and not plain.compress
            got: dict[str, list[dict[str, Any]]] = {"deflating": [], "plain": []}
            for name, ws in (("deflating", deflating), ("plain", plain)):
                await ws.send_json(SUB)
                while not any(f["type"] == "snapshot" for f in got[name]):
                    got[name].append(await ws.receive_json(timeout=10))
            await wait_for(lambda: len(service.channels[CHANNEL].subscribers) == 2)
            # a frame long enough to be deflated, twice (with context takeover the second
            # refers back to the first: the client must inflate both right)
            big = StatusFrame(CHANNEL, "live", "repeated reason " * 200)
            await service.hub.publish(big)
            await service.hub.publish(big)
            for name, ws in (("deflating", deflating), ("plain", plain)):
                while sum(f["type"] == "status" for f in got[name]) < 2 or not any(
                        f["type"] == "bar" for f in got[name]):
                    got[name].append(await ws.receive_json(timeout=10))
                snapshot = next(f for f in got[name] if f["type"] == "snapshot")
                assert len(snapshot["bars"]) == 50
                assert [f for f in got[name] if f["type"] == "status"] == [big.client()] * 2
                assert_ts_monotonic(got[name])
        finally:
            await deflating.close()
            await plain.close()


async def test_a_client_offering_a_small_window_gets_frames_deflated_for_it(
    app_config: dict[str, Any]
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    service = get_services(app).subscriptions
    async with serve_app(app, **hypercorn_options(app.config)) as addr, http_session() as session:
        # offers permessage-deflate; client_max_window_bits; server_max_window_bits=9
        ws = await session.ws_connect(f"http://{addr}/api/v1/ws", compress=9)
        try:
            extensions = ws._response.headers["Sec-WebSocket-Extensions"]
            assert "server_max_window_bits=9" in extensions
            await ws.send_json(SUB)
            frames: list[dict[str, Any]] = []
            while not any(f["type"] == "snapshot" for f in frames):
                frames.append(await ws.receive_json(timeout=10))
            big = StatusFrame(CHANNEL, "stale", "x" * 5000)
            await service.hub.publish(big)
            while True:
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.TEXT
                if '"status"' in msg.data:
                    break
            assert msg.json() == big.client()
        finally:
            await ws.close()


async def test_a_deflating_client_that_does_not_read_is_closed_with_1013(
    app_config: dict[str, Any]
) -> None:
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim", "WS_SEND_QUEUE": 8})
    service = get_services(app).subscriptions
    dropped = metric("ws_clients_dropped_total", {"reason": "slow"})
    async with serve_app(app, **hypercorn_options(app.config)) as addr:
        slow = await RawClient().open(
            addr, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
        try:
            assert b"permessage-deflate" in slow.head
            slow.send({**SUB, "history": 0})
            await wait_for(lambda: CHANNEL in service.channels
                           and len(service.channels[CHANNEL].subscribers) == 1)
            sent = 0
            while service.status()["connections"] == 1:  # its buffers fill up, then its queue
                assert sent < 5000, "the slow client was never dropped"
                # random text: deflate cannot shrink it, so the socket fills as fast as plain
                await service.hub.publish(StatusFrame(CHANNEL, "live", os.urandom(8000).hex()))
                sent += 1
                await asyncio.sleep(0)
            _, code = await slow.read_to_close()
            # it missed the frames queued when it was dropped (bar frames of the poller are
            # counted apart: the sim's forming bar changes at every poll)
            assert code == 1013 and slow.kinds["status"] < sent
            assert metric("ws_clients_dropped_total", {"reason": "slow"}) == dropped + 1
        finally:
            slow.close()
