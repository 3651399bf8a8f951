"""Helpers of the backfill tests: an app wired to the exchange emulator as ``binance``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from quart import Quart
from quart.typing import TestClientProtocol

from app import create_app
from app_extensions.services import get_services
from core.timeframes import DAY_MS, MINUTE_MS
from core.types import Series
from services.backfill.manager import BackfillManager
from services.bars import storage
from tests.support.exchange_emulator import ExchangeEmulator
from tests.support.exchange_emulator.candles import minute_candle
from tests.support.helpers import select_1m_bars

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, the emulator's first candle
KLINES = "/api/v3/klines"
BTC = Series("crypto", "binance", "BTC/USDT")
TEN_DAYS_END = T0 + 10 * DAY_MS  # 14,400 minutes: 15 chunks (the job and restart tests)


def emu_config(app_config: dict[str, Any], emu: ExchangeEmulator, **over: Any) -> dict[str, Any]:
    """The test app config with ``binance`` served by ``emu`` and quick retries and leases."""
    return {
        **app_config,
        "PROVIDER_URLS": {"binance": emu.url},
        "CCXT_EXCHANGES": "binance",
        "PROVIDER_BUDGETS": {"binance": "off"},
        "PROVIDER_BAN_DEFAULT": 0.1,
        "PROVIDER_RETRIES": 1,
        "PROVIDER_RETRY_MAX_WAIT": 0.05,
        "RATE_LIMITS": {"backfill": "off"},
        "BACKFILL_RETRY_BASE": 0.05,
        "BACKFILL_RETRY_MAX_WAIT": 0.3,
        "BACKFILL_POLL_INTERVAL": 0.2,
        "BACKFILL_LEASE_SECONDS": 1.5,
        "BACKFILL_PATIENCE": 30.0,
        **over,
    }


@asynccontextmanager
async def running_app(config: dict[str, Any]) -> AsyncIterator[Quart]:
    """A served app (before_serving ran: pool, migrations, job runner) until the block ends."""
    application = create_app(config)
    async with application.test_app():
        yield application


def manager(app: Quart) -> BackfillManager:
    return get_services(app).backfill


def candles(start: int, end: int, symbol: str = "BTCUSDT") -> list[list[float]]:
    """The emulator's 1m candles of [start, end) as bars."""
    return [list(minute_candle(symbol, t)) for t in range(start, end, MINUTE_MS)]


async def seed(pg: asyncpg.Connection, ranges: list[tuple[int, int]], series: Series = BTC) -> None:
    """Store the emulator's candles of ``ranges`` and record them complete, as a backfill would."""
    bars = [b for a, e in ranges for b in candles(a, e)]
    await storage.upsert_1m_bars(pg, series, bars, ranges)


async def job_row(pg: asyncpg.Connection, job_id: str) -> asyncpg.Record:
    """The ``backfill_jobs`` row of ``job_id`` (asserted to exist)."""
    row = await pg.fetchrow("SELECT * FROM backfill_jobs WHERE id = $1", job_id)
    assert row is not None
    return row


async def stored(pg: asyncpg.Connection, start: int, end: int, series: Series = BTC) -> list[list[float]]:
    return await select_1m_bars(pg, series, start, end)


async def post_backfill(
    client: TestClientProtocol, start: int, end: int, symbol: str = "BTC/USDT", **body: Any
) -> tuple[int, dict[str, Any]]:
    payload = {"market": "crypto", "provider": "binance", "symbol": symbol,
               "start": start, "end": end, **body}
    resp = await client.post("/api/v1/backfill", json=payload)
    return resp.status_code, await resp.get_json()


async def get_job(client: TestClientProtocol, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/backfill/{job_id}")
    assert resp.status_code == 200
    body: dict[str, Any] = await resp.get_json()
    return body


async def wait_job(
    client: TestClientProtocol, job_id: str, seconds: float = 30.0,
    until: tuple[str, ...] = ("done", "failed"), min_chunks: int | None = None,
) -> dict[str, Any]:
    """Poll the job until its status is in ``until`` (or ``min_chunks`` chunks are done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        resp = await client.get(f"/api/v1/backfill/{job_id}")
        if resp.status_code == 503 and loop.time() < deadline:  # storage coming back
            await asyncio.sleep(0.05)
            continue
        assert resp.status_code == 200, await resp.get_data(as_text=True)
        job: dict[str, Any] = await resp.get_json()
        if job["status"] in until or (min_chunks is not None and job["chunks_done"] >= min_chunks):
            return job
        if loop.time() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {seconds} s: {job}")
        await asyncio.sleep(0.05)


async def table_stats(pg: asyncpg.Connection, series: Series = BTC) -> tuple[int, int]:
    """(rows, distinct timestamps) of the series in ohlcv_1m."""
    row = await pg.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT ts) AS d FROM ohlcv_1m WHERE market = $1"
        " AND provider = $2 AND symbol = $3", series.market, series.provider, series.symbol)
    assert row is not None
    return int(row["n"]), int(row["d"])


__all__ = ["BTC", "DAY_MS", "KLINES", "MINUTE_MS", "T0"]
