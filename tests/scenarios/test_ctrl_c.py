"""Ctrl-C on ``python app.py`` (issue 14, fault 1): WebSocket clients the server closed (1013 for a
flood, 1009 for a frame over the limit) and clients still open end without a traceback in the
log; the still-open client is told 1001."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from tests.conftest import DATABASE_URL, REDIS_URL
from tests.scenarios.test_ws_backpressure import RawClient
from tests.scenarios.test_ws_sockets import SUB, raw_frame
from tests.support.live_server import ROOT, free_port


@asynccontextmanager
async def app_py(env: dict[str, str]) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python app.py`` (Hypercorn through app.serve_app) on a free port, its stderr piped; yields
    the process and its host:port once /health answers; killed if still running on exit."""
    port = free_port()
    full_env = {**os.environ, "APP_ENV": "testing", "DATABASE_URL": DATABASE_URL,
                "REDIS_URL": REDIS_URL, "PORT": str(port), "ENABLED_MARKETS": "sim",
                "SHUTDOWN_TIMEOUT": "3", "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING",
                **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "app.py", cwd=ROOT, env=full_env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    assert proc.returncode is None, "app.py exited at start-up"
                    assert time.monotonic() < deadline, "app.py did not come up"
                    await asyncio.sleep(0.2)
        yield proc, f"127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def test_ctrl_c_after_server_side_closes_logs_no_traceback(db_schema: str, redis_prefix: str) -> None:
    async with app_py({"DATABASE_SCHEMA": db_schema, "REDIS_PREFIX": redis_prefix}) as (proc, addr):
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
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert (await open_.read_to_close())[1] == 1001
        # None of them answers its close frame: Hypercorn cancels their connections at shutdown.
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        for client in (flood, big, open_):
            client.close()
    log = err.decode()
    assert proc.returncode == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
