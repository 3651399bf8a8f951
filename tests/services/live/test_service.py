"""What follows a snapshot (issue 14): a bar frame is never older than the snapshot it follows,
and bar values are rounded as REST rounds them (no float noise such as 6.5481430000000005); a
connection whose send stalls is dropped."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from quart import Quart

from app import create_app
from app_extensions.services import get_services
from core.timeframes import BAR_DECIMALS
from tests.services.live.test_connection import Gate, Recorder
from tests.support.ws import WS_TEST_CONFIG, recv_until, wait_for

SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "timeframe": "1m"}


async def first_bar_after_snapshot(app: Quart, history: int) -> tuple[list[float], dict[str, Any]]:
    """A new connection's snapshot's last bar and the first bar frame after it."""
    async with app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(json.dumps({**SUB, "history": history}))
        frames = await recv_until(ws, lambda f: f["type"] == "snapshot")
        snapshot = frames[-1]["bars"]
        frames = await recv_until(ws, lambda f: f["type"] == "bar")
        return snapshot[-1], frames[-1]


async def test_the_first_bar_after_a_snapshot_is_never_older_than_it(app_config: dict[str, Any]) -> None:
    """The sim's forming bar only grows (its volume with every poll): a first frame of the
    snapshot's bar with a smaller volume is an older value sent after a newer one."""
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    async with app.test_app(), app.test_client().websocket("/api/v1/ws") as keeper:
        await keeper.send(json.dumps({**SUB, "history": 1}))  # keeps the channel polled
        await recv_until(keeper, lambda f: f["type"] == "bar")
        stepped_back = []
        for i in range(25):
            last, frame = await first_bar_after_snapshot(app, 2 + i)  # distinct answer-cache keys
            if frame["bar"][0] == last[0] and frame["bar"][5] < last[5]:
                stepped_back.append((last, frame["bar"]))
            await asyncio.sleep(0.03)
        assert stepped_back == []


async def test_bar_frames_carry_no_float_noise(app_config: dict[str, Any]) -> None:
    """1h bars are sums of 1m volumes: rounded to BAR_DECIMALS as REST answers them."""
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"})
    async with app.test_app(), app.test_client().websocket("/api/v1/ws") as ws:
        await ws.send(json.dumps({**SUB, "timeframe": "1h", "history": 3}))
        frames = await recv_until(ws, lambda f: f["type"] == "bar", count=5)
        bars = [f["bar"] for f in frames if f["type"] == "bar"]
        noisy = [b for b in bars if any(v != round(v, BAR_DECIMALS) for v in b[1:])]
        assert noisy == []
        assert all(isinstance(f["seq"], int) for f in frames if f["type"] == "bar")


async def test_a_connection_whose_send_stalls_is_dropped_by_the_service(app_config: dict[str, Any]) -> None:
    """One watchdog for every connection drops those whose send the server has not taken for
    WS_SEND_TIMEOUT_SECONDS (no timer per message)."""
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim",
                      "WS_SEND_TIMEOUT_SECONDS": 0.4})
    async with app.test_app():
        service = get_services(app).subscriptions
        stalled, fine = Gate(), Recorder()
        stuck, ok = service.connect(stalled), service.connect(fine)
        try:
            stuck.send_frame({"type": "pong", "id": 1})
            ok.send_frame({"type": "pong", "id": 2})
            started = time.monotonic()
            await wait_for(lambda: stuck.drop_reason is not None, within=5)
            assert stuck.drop_reason == "send_timeout" and time.monotonic() - started >= 0.4
            assert ok.drop_reason is None and fine.texts == ['{"type":"pong","id":2}']
        finally:
            for conn in (stuck, ok):
                await conn.close()
                await service.disconnect(conn)
