"""A server process SIGKILLed in the middle of a job: the next process resumes the job and the table
ends with exactly the expected rows."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg

from tests.support.backfill import KLINES, T0, TEN_DAYS_END, candles, job_row, stored, table_stats
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.live_server import ROOT, free_port, launched_async

emulator = fixtures.emulator
END = TEN_DAYS_END


@asynccontextmanager
async def server(app_config: dict[str, Any], emu: ExchangeEmulator) -> AsyncIterator[tuple[
        asyncio.subprocess.Process, str]]:
    """``hypercorn app:create_app()`` serving in one subprocess (``--workers 0``: no child to
    outlive a SIGKILL), started without blocking our event loop (it serves the emulator);
    stopped with SIGTERM unless the test killed it."""
    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "APP_ENV": "testing", "LOG_LEVEL": "WARNING",
        "DATABASE_URL": app_config["DATABASE_URL"], "DATABASE_SCHEMA": app_config["DATABASE_SCHEMA"],
        "REDIS_URL": app_config["REDIS_URL"], "REDIS_PREFIX": app_config["REDIS_PREFIX"],
        "PROVIDER_URLS": json.dumps({"binance": emu.url}), "CCXT_EXCHANGES": "binance",
        "PROVIDER_BUDGETS": json.dumps({"binance": "off"}),
        "RATE_LIMITS": json.dumps({"backfill": "off"}),
        "BACKFILL_CONCURRENCY": "1", "BACKFILL_LEASE_SECONDS": "1.0",
        "BACKFILL_POLL_INTERVAL": "0.2",
    }
    command = [sys.executable, "-m", "hypercorn", "--workers", "0", "--bind", f"127.0.0.1:{port}",
               "app:create_app()"]
    async with launched_async(command, env, port, start_timeout=30.0, stop_timeout=15.0) as proc:
        yield proc, f"http://127.0.0.1:{port}"


async def test_sigkilled_server_job_resumes_in_the_next_process(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    emulator.latency = 0.05
    body = {"market": "crypto", "provider": "binance", "symbol": "BTC/USDT", "start": T0, "end": END}
    async with server(app_config, emulator) as (proc, base), aiohttp.ClientSession() as http:
        async with http.post(base + "/api/v1/backfill", json=body) as resp:
            assert resp.status == 202
            job_id = (await resp.json())["job_id"]
        async with asyncio.timeout(30):
            while True:  # polling another process's progress in the database
                if (await job_row(pg, job_id))["chunks_done"] >= 3:
                    break
                await asyncio.sleep(0.05)
        proc.kill()  # SIGKILL: no shutdown hooks, no release of the job
        await proc.wait()
    row = await job_row(pg, job_id)
    assert row["status"] == "running" and row["owner"] is not None and 3 <= row["chunks_done"] < 15
    assert await table_stats(pg) == (row["bars_written"], row["bars_written"])
    emulator.latency = 0.0
    async with server(app_config, emulator) as (_, base), aiohttp.ClientSession() as http:
        async with asyncio.timeout(30):
            while True:
                async with http.get(f"{base}/api/v1/backfill/{job_id}") as resp:
                    job = await resp.json()
                if job["status"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.1)
    assert job["status"] == "done" and job["progress"] == 1.0 and job["bars_written"] == 14_400
    row = await job_row(pg, job_id)
    assert row["attempts"] == 2 and row["owner"] is None and row["chunks_done"] == 15
    assert await table_stats(pg) == (14_400, 14_400)
    assert await stored(pg, T0, END) == candles(T0, END)
    # Only the chunks not yet written were fetched again, plus at most what the killed process
    # had fetched but not committed: the call in flight and the chunk its writer was writing.
    assert 15 <= emulator.calls(KLINES) <= 17
