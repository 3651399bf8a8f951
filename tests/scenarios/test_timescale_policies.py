"""TimescaleDB's optional policies (tests/support/pglite): compression and retention set from config, and
reads, late corrections and refreshes over compressed chunks. PGlite runs no background jobs, so
the compression job is run by hand (``run_job``); retention is only checked in the catalog."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.timeframes import DAY_MS
from tests.services.bars.test_aggregates import SERIES, WED, Store, close_store, make_bars, open_store, reference
from tests.support.helpers import count_1m_bars
from tests.support.pglite.fixtures import timescale_url  # noqa: F401  (session fixture)


@pytest.fixture
async def compressed(timescale_url: str, uid: str) -> AsyncIterator[Store]:  # noqa: F811
    settings = {"TIMESCALE_COMPRESSION_AFTER": "7 days", "TIMESCALE_RETENTION_AFTER": "3650 days"}
    store = await open_store(timescale_url, "timescale", f"sc_{uid}", settings)
    try:
        yield store
    finally:
        await close_store(store, timescale_url)


async def test_compression_and_retention_policies_follow_the_config(compressed: Store) -> None:
    async with compressed.pool.acquire() as conn:
        jobs = {r["proc_name"]: r["config"] for r in await conn.fetch(
            "SELECT proc_name, config::text FROM timescaledb_information.jobs WHERE hypertable_schema = $1"
            " AND hypertable_name = 'ohlcv_1m'", compressed.schema)}
    assert set(jobs) == {"policy_compression", "policy_retention"}
    assert '"7 days"' in jobs["policy_compression"] and '"3650 days"' in jobs["policy_retention"]


async def test_reads_corrections_and_refreshes_over_compressed_chunks(compressed: Store) -> None:
    bars = make_bars(WED, 6 * 1440, seed=21)  # 2024: every chunk is older than "7 days"
    await compressed.write(bars, refresh=True)
    async with compressed.pool.acquire() as conn:
        job = await conn.fetchval(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'"
            " AND hypertable_schema = $1", compressed.schema)
        await conn.execute(f"CALL run_job({int(job)})")
        chunks = await conn.fetch(
            "SELECT is_compressed FROM timescaledb_information.chunks WHERE hypertable_schema = $1"
            " AND hypertable_name = 'ohlcv_1m'", compressed.schema)
    assert chunks and all(c["is_compressed"] for c in chunks)
    for tf in ("1m", "3m", "1h", "1d", "1w"):
        assert await compressed.bars(tf) == reference(bars, tf), tf
    # A late correction lands in a compressed chunk and reaches every aggregate after the refresh.
    fixed = [[b[0], b[1], b[2] + 50, b[3] - 50, b[4], b[5] + 10] for b in bars[2000:2100]]
    await compressed.write(fixed, refresh=True)
    want = sorted(fixed + bars[:2000] + bars[2100:])
    for tf in ("1m", "5m", "4h", "1d", "1w", "12h"):
        assert await compressed.bars(tf) == reference(want, tf), tf
    assert await compressed.bars("1d", WED, WED + DAY_MS) == reference(want, "1d", WED, WED + DAY_MS)
    async with compressed.pool.acquire() as conn:
        assert await count_1m_bars(conn, SERIES, 0, 10**13) == len(bars)
