"""The chunk runner's writer: straight COPY into empty minutes, upserts (and announced revisions)
where bars are stored already or a concurrent writer gets there first, the 1m cache for recent
minutes only. Real PostgreSQL and Redis; binance through the exchange emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from app_extensions.db_pool import get_database
from app_extensions.services import get_services
from core.timeframes import Bar, now_ms
from core.types import Series
from services.backfill.chunks import BackfillSettings, ChunkRunner, CopyTurn, Progress
from services.backfill.gaps import split_chunks
from services.bars import storage
from services.bars.cache import BestEffortCache
from services.bars.provider_source import ProviderClient
from services.settings import build
from tests.conftest import DATABASE_URL
from tests.support.backfill import (
    BTC,
    DAY_MS,
    MINUTE_MS,
    T0,
    candles,
    emu_config,
    manager,
    running_app,
    stored,
    table_stats,
)
from tests.support.exchange_emulator import ExchangeEmulator, fixtures

emulator = fixtures.emulator
SIM = Series("sim", "sim", "SIM/USD")


class Announced:
    """A RevisionSink that keeps what it is told."""

    def __init__(self) -> None:
        self.bars: list[Bar] = []

    async def announce(self, series: Series, bars: Sequence[Bar]) -> None:
        self.bars.extend(list(b) for b in bars)


def runner(app: Any, sink: Announced, concurrency: int) -> ChunkRunner:
    settings = build(BackfillSettings, {"BACKFILL_CONCURRENCY": concurrency})
    return ChunkRunner(ProviderClient(get_services(app).markets), get_database(app), BestEffortCache(None),
                       settings, sink)


async def run(chunks_of: ChunkRunner, start: int, end: int) -> Progress:
    chunks = split_chunks([(start, end)], 1000 * MINUTE_MS, now_ms())
    progress = Progress(len(chunks))
    await chunks_of.run(BTC, chunks, progress, None, None)
    return progress


def altered(bars: list[list[float]]) -> list[list[float]]:
    return [[b[0], b[1], b[2], b[3], b[4] + 1.0, b[5]] for b in bars]


async def test_minutes_stored_without_the_ledger_are_upserted_and_changes_announced(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    end = T0 + 3000 * MINUTE_MS
    island = (T0 + 1500 * MINUTE_MS, T0 + 1510 * MINUTE_MS)
    async with running_app(emu_config(app_config, emulator)) as app:
        # A live poller's bars: stored, not in the ledger, values the exchange later revised.
        await storage.upsert_1m_bars(pg, BTC, altered(candles(*island)))
        sink = Announced()
        progress = await run(runner(app, sink, 4), T0, end)
    assert progress.chunks_done == 3 and progress.bars_written == 3000
    assert await table_stats(pg) == (3000, 3000)
    assert await stored(pg, T0, end) == candles(T0, end)
    assert sink.bars == candles(*island)
    assert await storage.covered_ranges(pg, BTC, T0, end) == [(T0, end)]


async def test_a_writer_getting_there_first_turns_the_copy_into_an_upsert(
    emulator: ExchangeEmulator, app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    end = T0 + 1000 * MINUTE_MS
    minute = T0 + 5 * MINUTE_MS
    watcher = await asyncpg.connect(DATABASE_URL)
    async with running_app(emu_config(app_config, emulator)) as app:
        sink = Announced()
        other = pg.transaction()
        await other.start()
        try:  # another writer's uncommitted bar: invisible to the check, in the COPY's way
            bar = altered(candles(minute, minute + MINUTE_MS))
            await storage.upsert_rows(pg, [storage.encode_rows(BTC, bar)])
            task = asyncio.create_task(run(runner(app, sink, 1), T0, end))
            async with asyncio.timeout(10):
                while True:  # until the backfill's COPY waits for our transaction
                    if await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE 'COPY%ohlcv_1m%'"
                    ):
                        break
                    await asyncio.sleep(0.02)
        finally:
            await other.commit()
            await watcher.close()
        progress = await task
    assert progress.bars_written == 1000
    assert await table_stats(pg) == (1000, 1000)
    assert await stored(pg, T0, end) == candles(T0, end)
    assert sink.bars == candles(minute, minute + MINUTE_MS)


async def test_recent_minutes_go_to_the_1m_cache_and_history_does_not(
    app_config: dict[str, Any],
) -> None:
    async with running_app({**app_config, "BACKFILL_CACHE_DAYS": 1.0}) as app:
        backfill = manager(app)
        old = now_ms() // MINUTE_MS * MINUTE_MS - 3 * DAY_MS
        recent = now_ms() // MINUTE_MS * MINUTE_MS - 3 * 60 * MINUTE_MS
        await backfill.backfill(SIM, old, old + 120 * MINUTE_MS)
        await backfill.backfill(SIM, recent, recent + 120 * MINUTE_MS)
        assert await backfill.cache.get_1m(SIM, old, old + 120 * MINUTE_MS) == []
        cached = await backfill.cache.get_1m(SIM, recent, recent + 120 * MINUTE_MS)
    assert [b[0] for b in cached] == list(range(recent, recent + 120 * MINUTE_MS, MINUTE_MS))


async def test_two_batches_in_flight_pass_each_other_on_a_pool_of_one_connection(
    app_config: dict[str, Any], pg: asyncpg.Connection
) -> None:
    """The writer keeps two batches in flight, the second waiting (with a connection) for the
    first's COPY: on a pool of one connection it must still get through, every bar once."""
    start = now_ms() // (1000 * MINUTE_MS) * (1000 * MINUTE_MS) - 20 * DAY_MS
    end = start + 20_000 * MINUTE_MS
    config = {**app_config, "DB_POOL_MIN": 1, "DB_POOL_MAX": 1, "BACKFILL_RUNNER": False}
    async with running_app(config) as app:
        async with asyncio.timeout(60):
            progress = await manager(app).backfill(SIM, start, end)
    assert (progress.chunks_done, progress.bars_written) == (20, 20_000)
    assert await table_stats(pg, SIM) == (20_000, 20_000)
    assert await storage.covered_ranges(pg, SIM, start, end) == [(start, end)]


async def test_copies_take_their_turns_in_batch_order() -> None:
    first = CopyTurn(CopyTurn())
    second = CopyTurn(first)
    third = CopyTurn(second)
    order: list[str] = []

    async def copy(turn: CopyTurn, name: str) -> None:
        async with turn:
            order.append(name)
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(copy(third, "third")), asyncio.create_task(copy(second, "second"))]
    await asyncio.sleep(0.02)
    assert order == []  # both wait for the first batch's turn
    first.pass_on()  # the first batch gave its turn up (an upsert, a failed attempt)
    await asyncio.gather(*tasks)
    assert order == ["second", "third"]
