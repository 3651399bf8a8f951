"""Every server the README names, through the serving entry point (``python serve.py --server``):
REST, a WebSocket subscription, then a graceful shutdown on SIGINT (Ctrl-C) and on SIGTERM
(``kill -TERM``, what systemd and Docker send): the subscribed client is told 1001 before the
server goes, the process exits 0 without a traceback, and the app's shutdown has run."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import pytest

from tests.support.live_server import serving

#: README, "Running": Uvicorn in production, Hypercorn (the design's server) supported, Granian
#: measured and served (no WebSocket heartbeat: see serve.granian_serve).
SERVERS = ("uvicorn", "hypercorn", "granian")
SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD",
       "timeframe": "1m", "history": 3}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["kill-TERM", "ctrl-C"])
async def test_rest_websocket_and_graceful_shutdown(
        server: str, sig: signal.Signals, db_schema: str, redis_prefix: str) -> None:
    env = {"DATABASE_SCHEMA": db_schema, "REDIS_PREFIX": redis_prefix, "LOG_LEVEL": "INFO"}
    async with serving(env, server) as (proc, addr), aiohttp.ClientSession() as http:
        async with http.get(f"http://{addr}/api/v1/ohlcv", params={
                "market": "sim", "provider": "sim", "symbol": "SIM/USD", "timeframe": "1m",
                "limit": "5"}) as r:
            assert r.status == 200, await r.text()
            assert len((await r.json())["bars"]) == 5
        async with http.get(f"http://{addr}/api/v1/nope") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"
        ws = await http.ws_connect(f"ws://{addr}/api/v1/ws")
        await ws.send_str(json.dumps(SUB))
        async with asyncio.timeout(20):
            while (snapshot := await ws.receive_json())["type"] != "snapshot":
                pass
        assert len(snapshot["bars"]) == 3
        started = time.monotonic()
        proc.send_signal(sig)
        async with asyncio.timeout(10):
            while (msg := await ws.receive()).type not in (
                    aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                pass
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, (msg.type, msg.data)
        await ws.close()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
    # Every extension closed in time ("closing X timed out / failed" is a WARNING).
    loud = [line for line in log.splitlines() if (" WARNING " in line or " ERROR " in line)
            and "Embedded server is experimental" not in line]  # Granian's, at every start
    assert not loud, log
    assert time.monotonic() - started < 15  # SHUTDOWN_TIMEOUT=3: the drain, then the server
