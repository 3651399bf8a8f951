"""Storage and aggregates against both backends: plain PostgreSQL and a real TimescaleDB.

Every test taking ``store`` runs twice: on PostgreSQL (127.0.0.1:5432, plain mode, query-time
aggregation) and on TimescaleDB (PGlite in WebAssembly, see tests/support/pglite; hypertable, hierarchical
continuous aggregates). Both must answer what ``core.timeframes.resample`` computes from the
same 1m bars. Prices and volumes are multiples of 1/4, so sums are exact and bars compare equal.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app_extensions.migrations import run_migrations
from config import TestingConfig
from core.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, TIMEFRAMES, Bar, bucket_ceil, bucket_start, resample
from core.types import Series
from services.bars import aggregates, storage
from tests.conftest import DATABASE_URL
from tests.support.pglite.fixtures import timescale_url  # noqa: F401  (session fixture)

SERIES = Series("sim", "sim", "SIM/USD")
WED = int(datetime(2024, 1, 3, tzinfo=UTC).timestamp() * 1000)  # a Wednesday
ALL = (0, 10**13)


@dataclass
class Store:
    mode: str
    pool: asyncpg.Pool
    schema: str

    async def write(self, bars: Sequence[Bar], series: Series = SERIES, refresh: bool = False) -> None:
        async with self.pool.acquire() as conn:
            await storage.upsert_1m_bars(conn, series, bars)
            if refresh:
                await aggregates.refresh_window(conn, self.mode, int(bars[0][0]), int(bars[-1][0]) + MINUTE_MS)

    async def bars(self, tf: str, start: int = ALL[0], end: int = ALL[1], limit: int = 100_000,
                   series: Series = SERIES) -> list[Bar]:
        async with self.pool.acquire() as conn:
            return await aggregates.select_bars(
                conn, self.mode, series, tf, start, end, limit)


def make_bars(start: int, n: int, seed: int, skip: float = 0.02) -> list[Bar]:
    """``n`` minutes of a random walk from ``start``, with about ``skip`` of them missing."""
    rnd, price, out = random.Random(seed), 400.0, []
    for i in range(n):
        price = max(1.0, price + rnd.randint(-8, 8) / 4)
        if rnd.random() < skip:
            continue
        o, c = price, max(1.0, price + rnd.randint(-4, 4) / 4)
        out.append([start + i * MINUTE_MS, o, max(o, c) + rnd.randint(0, 4) / 4,
                    min(o, c) - rnd.randint(0, 4) / 4, c, rnd.randint(1, 400) / 4])
    return out


def reference(bars: Sequence[Bar], tf: str, start: int = ALL[0], end: int = ALL[1],
              limit: int = 100_000) -> list[Bar]:
    return [b for b in resample(sorted(bars), tf) if start <= b[0] < end][:limit]


def config_for(schema: str, mode: str, settings: dict[str, str] | None = None) -> dict[str, Any]:
    return {**aggregates.TIMESCALE_SETTINGS, **TestingConfig().as_dict(), "DATABASE_SCHEMA": schema,
            "STORAGE_MODE": mode, "TIMESCALE_CHUNK_INTERVAL": "2 days", **(settings or {})}


async def open_store(url: str, mode: str, schema: str, settings: dict[str, str] | None = None) -> Store:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4,
                                     server_settings={"search_path": f"{schema},public", "timezone": "UTC"})
    async with pool.acquire() as conn:
        assert await run_migrations(conn, config_for(schema, mode, settings)) == mode
    return Store(mode, pool, schema)


async def close_store(store: Store, url: str) -> None:
    await store.pool.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["plain", "timescale"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    if request.param == "plain":
        return "plain", DATABASE_URL
    return "timescale", request.getfixturevalue("timescale_url")


@pytest.fixture
async def store(backend: tuple[str, str], uid: str) -> AsyncIterator[Store]:
    mode, url = backend
    s = await open_store(url, mode, f"sb_{uid}")
    try:
        yield s
    finally:
        await close_store(s, url)


async def test_migrations_build_the_schema_of_the_mode(store: Store) -> None:
    async with store.pool.acquire() as conn:
        caggs = await conn.fetch(
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
            " WHERE view_schema = $1", store.schema) if store.mode == "timescale" else []
        if store.mode == "plain":
            assert await conn.fetchval("SELECT to_regclass('ohlcv_5m')") is None
            return
        assert {r["view_name"]: r["materialized_only"] for r in caggs} == {v: False for _, v in aggregates.CAGGS}
        interval = await conn.fetchval(
            "SELECT time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_schema = $1 AND hypertable_name = 'ohlcv_1m'", store.schema)
        assert interval.days == 2  # TIMESCALE_CHUNK_INTERVAL reached the hypertable
        jobs = await conn.fetch(
            "SELECT j.proc_name, j.config FROM timescaledb_information.jobs j"
            " WHERE j.hypertable_schema = $1", store.schema)
        refresh = [j for j in jobs if j["proc_name"] == "policy_refresh_continuous_aggregate"]
        assert len(refresh) == len(aggregates.CAGGS)
        assert not [j for j in jobs if j["proc_name"] != "policy_refresh_continuous_aggregate"]  # off by default
        states = await aggregates.aggregate_states(conn)
        assert set(states) == set(aggregates.CAGG_VIEWS.values())


async def test_every_timeframe_equals_the_reference(store: Store) -> None:
    # 16 days from a Wednesday afternoon: weeks, days and hours start inside the data, with gaps.
    bars = make_bars(WED + 13 * HOUR_MS + 7 * MINUTE_MS, 16 * 1440, seed=1)
    bars = [b for b in bars if not WED + 5 * DAY_MS <= b[0] < WED + 6 * DAY_MS + 3 * HOUR_MS]
    # Before Monday the 15th: written as a backfill and refreshed. From it: written as live bars
    # are (not refreshed), so those buckets come from real-time aggregation.
    monday = WED + 12 * DAY_MS
    await store.write([b for b in bars if b[0] < monday], refresh=True)
    await store.write([b for b in bars if b[0] >= monday])
    if store.mode == "timescale":
        async with store.pool.acquire() as conn:
            states = await aggregates.aggregate_states(conn)
        assert {s.watermark_ms for s in states.values()} == {monday}
    for tf in TIMEFRAMES:
        assert await store.bars(tf) == reference(bars, tf), tf
    weeks = await store.bars("1w")
    assert all(datetime.fromtimestamp(b[0] / 1000, UTC).weekday() == 0 for b in weeks) and len(weeks) == 3
    rnd = random.Random(7)
    for _ in range(12):  # unaligned windows and limits
        tf = rnd.choice(list(TIMEFRAMES))
        start = rnd.randrange(int(bars[0][0]) - DAY_MS, int(bars[-1][0]))
        end, limit = start + rnd.randrange(1, 6 * DAY_MS), rnd.choice([1, 3, 50, 5000])
        assert await store.bars(tf, start, end, limit) == reference(bars, tf, start, end, limit), (tf, start, end)


async def test_timescale_equals_plain(timescale_url: str, uid: str) -> None:  # noqa: F811
    monday = WED - 2 * DAY_MS
    bars = make_bars(monday + 11 * MINUTE_MS, 10 * 1440, seed=2)
    plain = await open_store(DATABASE_URL, "plain", f"sp_{uid}")
    ts = await open_store(timescale_url, "timescale", f"st_{uid}")
    try:
        for s in (plain, ts):  # materialized up to the second Monday, real-time after it
            await s.write([b for b in bars if b[0] < monday + 7 * DAY_MS], refresh=True)
            await s.write([b for b in bars if b[0] >= monday + 7 * DAY_MS])
        for tf in TIMEFRAMES:
            assert await ts.bars(tf) == await plain.bars(tf), tf
        assert [b[0] for b in await ts.bars("1w")] == [WED - 2 * DAY_MS, WED + 5 * DAY_MS]  # Mondays
    finally:
        await close_store(plain, DATABASE_URL)
        await close_store(ts, timescale_url)


async def test_real_time_aggregation_includes_bars_after_the_last_refresh(store: Store) -> None:
    monday = WED + 5 * DAY_MS
    sunday, mon = make_bars(monday - DAY_MS, 1440, seed=3), make_bars(monday, 1440, seed=4)
    await store.write(sunday, refresh=True)  # materialized: every watermark is now Monday 00:00
    await store.write(mon)  # after the watermarks, not refreshed
    for tf in TIMEFRAMES:
        assert await store.bars(tf) == reference(sunday + mon, tf), tf
    now = bucket_start(int(datetime.now(UTC).timestamp() * 1000), "1m")
    live = make_bars(now - 90 * MINUTE_MS, 90, seed=11)
    async with store.pool.acquire() as conn:
        await storage.upsert_1m_bars(conn, SERIES, live)
        # Inside the refresh policies' window and after the watermark: nothing to refresh.
        assert await aggregates.refresh_window(conn, store.mode, now - 90 * MINUTE_MS, now) == []
    for tf in ("5m", "15m", "30m", "1h"):
        assert await store.bars(tf, now - DAY_MS, now + HOUR_MS) == reference(live, tf, now - DAY_MS), tf
    if store.mode == "timescale":
        async with store.pool.acquire() as conn:
            assert (await aggregates.aggregate_states(conn))["ohlcv_1h"].watermark_ms == monday
            # Only real-time aggregation can have produced Monday: the materialization lacks it.
            await conn.execute("ALTER MATERIALIZED VIEW ohlcv_1h SET (timescaledb.materialized_only = true)")
            assert await conn.fetchval("SELECT count(*) FROM ohlcv_1h WHERE bucket >= $1", storage.to_dt(monday)) == 0
            await conn.execute("ALTER MATERIALIZED VIEW ohlcv_1h SET (timescaledb.materialized_only = false)")


async def test_backfill_older_than_the_policy_window_is_visible_after_refresh(store: Store) -> None:
    bars = make_bars(WED, 3 * 1440, seed=5, skip=0)
    hole = [b for b in bars if WED + 30 * HOUR_MS <= b[0] < WED + 36 * HOUR_MS + 30 * MINUTE_MS]
    stale = [b for b in bars if b not in hole]
    await store.write(stale)
    async with store.pool.acquire() as conn:
        await aggregates.refresh_all(conn, store.mode)
    corrected = [[b[0], b[1], b[2] + 100, b[3], b[4], b[5] + 1] for b in stale[:3]]  # a late correction
    await store.write(hole + corrected)  # 2024: far older than any policy's window
    want = sorted(hole + corrected + stale[3:])
    if store.mode == "timescale":  # the materialization still has the old buckets
        assert await store.bars("1h") != reference(want, "1h")
    async with store.pool.acquire() as conn:
        lo, hi = int(hole[0][0]), int(hole[-1][0]) + MINUTE_MS
        done = await aggregates.refresh_window(conn, store.mode, lo, hi)
        done += await aggregates.refresh_window(conn, store.mode, int(corrected[0][0]), int(corrected[-1][0]) + 1)
    if store.mode == "timescale":
        assert [d[0] for d in done[:6]] == [v for _, v in aggregates.CAGGS]
        assert done[:6] == [(v, bucket_start(lo, tf), bucket_ceil(hi, tf)) for tf, v in aggregates.CAGGS]
    else:
        assert done == []
    for tf in TIMEFRAMES:
        assert await store.bars(tf) == reference(want, tf), tf


async def test_refresh_never_hides_history_that_was_not_materialized(store: Store) -> None:
    early = make_bars(WED, 2 * 1440, seed=6)
    await store.write(early)  # never refreshed: served by real-time aggregation only
    late = make_bars(WED + 9 * DAY_MS, 600, seed=7)
    await store.write(late, refresh=True)  # moves the watermark past `early`...
    gap = make_bars(WED + 4 * DAY_MS, 300, seed=8)
    await store.write(gap, refresh=True)  # ...and between, below the watermark
    after = make_bars(WED + 12 * DAY_MS, 300, seed=9)
    await store.write(after, refresh=True)  # after the watermark, older than the policy window
    for tf in ("5m", "1h", "4h", "1d", "1w", "2h"):
        assert await store.bars(tf) == reference(early + late + gap + after, tf), tf


@pytest.mark.parametrize(
    ("watermark", "policy_from", "window", "want"),
    [
        (None, 0, (5 * HOUR_MS, 6 * HOUR_MS), None),  # live data inside the policy's window
        (None, 10 * DAY_MS, (5 * HOUR_MS, 6 * HOUR_MS), (None, 6 * HOUR_MS)),  # history first
        (2 * HOUR_MS, 10 * DAY_MS, (5 * HOUR_MS + 1, 6 * HOUR_MS), (2 * HOUR_MS, 6 * HOUR_MS)),
        (8 * HOUR_MS, 10 * DAY_MS, (5 * HOUR_MS + 1, 6 * HOUR_MS - 1), (5 * HOUR_MS, 6 * HOUR_MS)),
        (8 * HOUR_MS, 0, (5 * HOUR_MS, 6 * HOUR_MS), (5 * HOUR_MS, 6 * HOUR_MS)),  # stale below wm
        (8 * HOUR_MS, None, (9 * HOUR_MS, 10 * HOUR_MS), (8 * HOUR_MS, 10 * HOUR_MS)),  # no policy
    ],
)
def test_plan_refresh(watermark: int | None, policy_from: int | None, window: tuple[int, int],
                      want: tuple[int | None, int] | None) -> None:
    state = aggregates.AggregateState("ohlcv_1h", watermark, policy_from)
    assert aggregates.plan_refresh(state, "1h", *window) == want


async def test_a_pool_of_four_writes_and_reads_concurrently(store: Store) -> None:
    series = [Series("sim", "sim", f"C{i}/USD") for i in range(4)]
    data = {s: make_bars(WED + i * HOUR_MS, 900, seed=10 + i) for i, s in enumerate(series)}

    async def one(s: Series) -> None:
        await store.write(data[s][:450], series=s, refresh=True)
        async with store.pool.acquire() as conn:  # executemany goes through the extended protocol
            await conn.executemany(
                "INSERT INTO ohlcv_1m VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [(s.market, s.provider, s.symbol, storage.to_dt(int(b[0])), *b[1:]) for b in data[s][450:]])
            await aggregates.refresh_window(conn, store.mode, int(data[s][450][0]), int(data[s][-1][0]) + MINUTE_MS)
        assert await store.bars("15m", series=s) == reference(data[s], "15m")

    await asyncio.gather(*(one(s) for s in series))
    for s in series:
        assert await store.bars("1h", series=s) == reference(data[s], "1h")


_TF = st.sampled_from(sorted(TIMEFRAMES))
_MINUTES = st.lists(st.integers(0, 9 * 1440), min_size=1, max_size=120, unique=True)
_QUARTERS = st.integers(4, 4000).map(lambda q: q / 4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(minutes=_MINUTES, tf=_TF, data=st.data())
async def test_property_any_bars_any_window(store: Store, minutes: list[int], tf: str, data: st.DataObject) -> None:
    series = Series("sim", "sim", f"P/{uuid.uuid4().hex}")  # one series per example
    base = WED - 2 * DAY_MS
    bars = [[base + m * MINUTE_MS, *(data.draw(_QUARTERS) for _ in range(5))] for m in sorted(minutes)]
    bars = [[t, o, max(o, h, lo, c), min(o, h, lo, c), c, v] for t, o, h, lo, c, v in bars]
    await store.write(bars, series=series, refresh=True)
    start = base + data.draw(st.integers(-1440, 9 * 1440)) * MINUTE_MS + data.draw(st.integers(0, 59_999))
    end = start + data.draw(st.integers(1, 10 * 1440)) * MINUTE_MS
    limit = data.draw(st.integers(1, 50))
    assert await store.bars(tf, start, end, limit, series=series) == reference(bars, tf, start, end, limit)
