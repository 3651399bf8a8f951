"""Small helpers shared by tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from quart import Quart

from app import create_app
from app_extensions.services import get_services
from core.timeframes import Bar
from core.types import Series, to_dt, to_ms
from plugins import crypto


@asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[Quart]:
    """``create_app(config)`` between its start-up and its shutdown (``app.test_app()``)."""
    application = create_app(config)
    async with application.test_app():
        yield application


async def readiness(app: Quart) -> dict[str, Any]:
    """The body of ``/health/ready``, which must answer 200."""
    r = await app.test_client().get("/health/ready")
    assert r.status_code == 200
    body: dict[str, Any] = await r.get_json()
    return body


def sim_calls(app: Quart) -> int:
    """fetch_ohlcv calls made by the app's sim plugin instance(s) so far."""
    total = 0
    for entry in get_services(app).markets._instances.values():
        calls: dict[str, Any] = getattr(entry.plugin, "calls", {})
        total += int(calls.get("fetch_ohlcv", 0))
    return total


async def drop_schema(database_url: str, schema: str) -> None:
    """Drop ``schema`` (a test's own) and everything in it."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every Redis key under ``prefix:`` (a test's own namespace)."""
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def clear_shared_markets() -> None:
    """Forget the CCXT markets that CryptoPlugin instances share (a later emulator may reuse a port)."""
    crypto._MARKETS.clear()


async def select_1m_bars(
    conn: asyncpg.Connection, series: Series, start_ms: int, end_ms: int, limit: int | None = None
) -> list[Bar]:
    """The stored 1m bars of ``series`` in [start_ms, end_ms), oldest first."""
    rows = await conn.fetch(
        "SELECT ts, open, high, low, close, volume FROM ohlcv_1m"
        " WHERE market = $1 AND provider = $2 AND symbol = $3 AND ts >= $4 AND ts < $5"
        " ORDER BY ts LIMIT $6",
        series.market, series.provider, series.symbol, to_dt(start_ms), to_dt(end_ms), limit,
    )
    return [[to_ms(r[0]), r[1], r[2], r[3], r[4], r[5]] for r in rows]


async def count_1m_bars(conn: asyncpg.Connection, series: Series, start_ms: int, end_ms: int) -> int:
    """How many 1m bars of ``series`` are stored in [start_ms, end_ms)."""
    n: int = await conn.fetchval(
        "SELECT count(*) FROM ohlcv_1m WHERE market = $1 AND provider = $2 AND symbol = $3"
        " AND ts >= $4 AND ts < $5",
        series.market, series.provider, series.symbol, to_dt(start_ms), to_dt(end_ms),
    )
    return n
