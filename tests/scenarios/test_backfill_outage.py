"""A PostgreSQL outage in the middle of a job slows it down; the job still ends exactly right."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio

from tests.support.backfill import (
    T0,
    TEN_DAYS_END,
    candles,
    emu_config,
    post_backfill,
    running_app,
    stored,
    table_stats,
    wait_job,
)
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.tcp_proxy import TcpProxy

emulator = fixtures.emulator
END = TEN_DAYS_END


@pytest_asyncio.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    yield proxy
    await proxy.stop()


async def test_storage_outage_mid_job_is_waited_out(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection,
    pg_proxy: TcpProxy,
) -> None:
    emulator.latency = 0.05
    config = emu_config(
        app_config, emulator, BACKFILL_CONCURRENCY=1, BACKFILL_LEASE_SECONDS=1.0,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/test",
        DEPENDENCY_RETRY_AFTER=0.1, DB_CONNECT_TIMEOUT=1.0,
    )
    async with running_app(config) as app:
        client = app.test_client()
        _, body = await post_backfill(client, T0, END)
        await wait_job(client, body["job_id"], until=("done",), min_chunks=3)
        pg_proxy.cut()
        await asyncio.sleep(2.0)  # longer than the job's lease
        resp = await client.get(f"/api/v1/backfill/{body['job_id']}")
        assert resp.status_code == 503
        assert (await resp.get_json())["error"]["code"] == "dependency_unavailable"
        pg_proxy.restore()
        emulator.latency = 0.0
        job = await wait_job(client, body["job_id"], seconds=30)
    assert job["status"] == "done" and job["error"] is None
    assert job["bars_written"] == 14_400  # no chunk counted twice across the outage
    assert await table_stats(pg) == (14_400, 14_400)
    assert await stored(pg, T0, END) == candles(T0, END)
