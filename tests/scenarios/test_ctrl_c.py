"""Ctrl-C on ``python serve.py`` (``make run``; issue 14, fault 1): WebSocket clients the server closed (1013 for a
flood, 1009 for a frame over the limit) and clients still open end without a traceback in the
log; the still-open client is told 1001."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.scenarios.test_ws_backpressure import RawClient
from tests.scenarios.test_ws_sockets import SUB, raw_frame
from tests.support.live_server import serving
from tests.support.ws import wait_for


async def only_open_subscribed(addr: str) -> bool:
    """The server's /metrics count one WebSocket connection, and it holds its subscription."""
    async with aiohttp.ClientSession() as http, http.get(f"http://{addr}/metrics") as resp:
        text = await resp.text()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values.get("ws_connections") == 1 and values.get("ws_subscriptions") == 1


async def test_ctrl_c_after_server_side_closes_logs_no_traceback(db_schema: str, redis_prefix: str) -> None:
    async with serving({"DATABASE_SCHEMA": db_schema, "REDIS_PREFIX": redis_prefix}) as (proc, addr):
        flood = await RawClient().open(addr)
        # subscribes (each answered with a 1000-bar snapshot) sent far faster than they are
        # handled, never reading: 1013
        for _ in range(500):
            flood.writer.write(raw_frame(json.dumps({**SUB, "history": 1000}).encode()))
        await flood.writer.drain()
        big = await RawClient().open(addr)  # a frame over the limit: 1009
        big.writer.write(raw_frame(json.dumps({"op": "ping", "pad": "x" * 70 * 1024}).encode()))
        await big.writer.drain()
        assert (await flood.read_to_close())[1] == 1013
        assert (await big.read_to_close())[1] == 1009
        open_ = await RawClient().open(addr)  # still subscribed at Ctrl-C
        open_.send(SUB)
        await wait_for(lambda: only_open_subscribed(addr))
        proc.send_signal(signal.SIGINT)
        assert (await open_.read_to_close())[1] == 1001
        # None of them answers its close frame: Hypercorn cancels their connections at shutdown.
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        for client in (flood, big, open_):
            client.close()
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
