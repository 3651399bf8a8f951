"""Storage against the real PostgreSQL: migrations, idempotent and atomic writes, the ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from app_extensions.migrations import run_migrations
from config import TestingConfig as _TestingConfig
from core.timeframes import MINUTE_MS, resample
from core.types import Series, merge_ranges, subtract_ranges
from services.bars import aggregates, storage
from tests.conftest import DATABASE_URL
from tests.support.helpers import count_1m_bars, select_1m_bars

SERIES = Series("sim", "sim", "SIM/USD")
T0 = 1_700_000_040_000  # a minute boundary


def bars_at(start: int, n: int, base: float = 100.0) -> list[list[float]]:
    return [[start + i * MINUTE_MS, base + i, base + i + 2, base + i - 1, base + i + 1, 1.0 + i]
            for i in range(n)]


def cfg(schema: str) -> dict[str, Any]:
    c = _TestingConfig().as_dict()
    c["DATABASE_SCHEMA"] = schema
    return c


@pytest.fixture
async def migrated(pg: asyncpg.Connection, db_schema: str) -> asyncpg.Connection:
    mode = await run_migrations(pg, cfg(db_schema))
    assert mode in ("plain", "timescale")
    return pg


async def test_migrations_are_idempotent(migrated: asyncpg.Connection, db_schema: str) -> None:
    before = await migrated.fetch("SELECT version FROM schema_migrations ORDER BY version")
    await run_migrations(migrated, cfg(db_schema))
    after = await migrated.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert before == after and len(after) >= 1


async def test_concurrent_instances_migrate_once(db_schema: str) -> None:
    conns = [await asyncpg.connect(DATABASE_URL) for _ in range(4)]
    try:
        modes = await asyncio.gather(*(run_migrations(c, cfg(db_schema)) for c in conns))
        assert len(set(modes)) == 1
        rows = await conns[0].fetch(
            f'SELECT version, count(*) AS n FROM "{db_schema}".schema_migrations GROUP BY version'
        )
        assert rows and all(r["n"] == 1 for r in rows)
    finally:
        for c in conns:
            await c.close()


async def test_writing_the_same_bars_twice_changes_nothing(migrated: asyncpg.Connection) -> None:
    bars = bars_at(T0, 50)
    assert await storage.upsert_1m_bars(migrated, SERIES, bars) == 50
    first = await select_1m_bars(migrated, SERIES, T0, T0 + 50 * MINUTE_MS)
    await storage.upsert_1m_bars(migrated, SERIES, bars)
    second = await select_1m_bars(migrated, SERIES, T0, T0 + 50 * MINUTE_MS)
    assert first == second == bars
    assert await count_1m_bars(migrated, SERIES, 0, 10**13) == 50


async def test_a_batch_that_fails_midway_leaves_no_rows(migrated: asyncpg.Connection) -> None:
    bars = bars_at(T0, 30)
    # The bars are copied and inserted, then the ledger insert violates its CHECK constraint:
    # the whole batch must roll back.
    with pytest.raises(asyncpg.CheckViolationError):
        await storage.upsert_1m_bars(migrated, SERIES, bars, complete=[(T0, T0 - 1)])
    assert await count_1m_bars(migrated, SERIES, 0, 10**13) == 0
    assert await storage.covered_ranges(migrated, SERIES, 0, 10**13) == []


async def test_corrections_overwrite_previous_values(migrated: asyncpg.Connection) -> None:
    await storage.upsert_1m_bars(migrated, SERIES, bars_at(T0, 3))
    fixed = [[T0 + MINUTE_MS, 5.0, 6.0, 4.0, 5.5, 9.0]]
    await storage.upsert_1m_bars(migrated, SERIES, fixed)
    got = await select_1m_bars(migrated, SERIES, T0, T0 + 3 * MINUTE_MS)
    assert got[1] == fixed[0] and len(got) == 3


async def test_ledger_merges_and_reports_missing(migrated: asyncpg.Connection) -> None:
    h = 60 * MINUTE_MS
    await storage.record_complete(migrated, SERIES, [(0, h), (2 * h, 3 * h)])
    await storage.record_complete(migrated, SERIES, [(h, 2 * h)])
    assert await storage.covered_ranges(migrated, SERIES, 0, 10 * h) == [(0, 3 * h)]
    assert await storage.missing_ranges(migrated, SERIES, 0, 5 * h) == [(3 * h, 5 * h)]
    rows = await migrated.fetchval("SELECT count(*) FROM fetched_ranges")
    assert rows == 1


@pytest.mark.parametrize("timeframe", ["3m", "5m", "1h", "4h", "1d", "1w"])
async def test_sql_aggregation_equals_python_resample(
    migrated: asyncpg.Connection, timeframe: str
) -> None:
    bars = bars_at(T0, 3000) + bars_at(T0 + 10_000 * MINUTE_MS, 500, 50.0)
    await storage.upsert_1m_bars(migrated, SERIES, bars)
    got = await aggregates.select_bars(
        migrated, "plain", SERIES, timeframe, 0, 10**13, 10_000
    )
    want = resample(bars, timeframe)
    assert [b[0] for b in got] == [b[0] for b in want]
    for g, w in zip(got, want, strict=True):
        assert g[1:5] == w[1:5]
        assert g[5] == pytest.approx(w[5])


def test_range_arithmetic() -> None:
    assert merge_ranges([(5, 7), (0, 2), (2, 4)]) == [(0, 4), (5, 7)]
    assert subtract_ranges(0, 10, [(2, 4), (3, 6), (8, 12)]) == [(0, 2), (6, 8)]
    assert subtract_ranges(0, 10, []) == [(0, 10)]
    assert subtract_ranges(0, 10, [(0, 10)]) == []
