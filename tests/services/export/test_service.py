"""services/export: the binary COPY parser and the volume rounding (against Python's own), and the
Exporter's stream on real PostgreSQL: produced batch by batch, memory bounded, stopped early."""

from __future__ import annotations

import io
import random
import tracemalloc
from collections.abc import AsyncGenerator
from typing import Any

import asyncpg
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quart import Quart

from app_extensions.export import get_exporter
from core.errors import DataSourceError
from core.timeframes import DAY_MS, MINUTE_MS, round_bar
from core.types import Series
from plugins.sim import sim_bar
from services.bars import storage
from services.export import FORMATS, Exporter, ExportSettings
from services.export.rows import CopyParser, round_volumes, to_batch

SIM = Series("sim", "sim", "SIM/USD")
T0 = 1_704_067_200_000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.floats(min_value=0, max_value=1e12, allow_nan=False),
    st.floats(min_value=0, max_value=1e3, allow_nan=False).map(lambda x: x + 0.000000005),
    st.integers(0, 10**12).map(lambda k: k / 10**9),  # nine decimals: halfway cases of eight
    st.floats(min_value=3e7, max_value=7e7)), min_size=1, max_size=50))
def test_round_volumes_is_pythons_round(values: list[float]) -> None:
    got = round_volumes(np.array(values, dtype=np.float64)).tolist()
    assert got == [round_bar([0, 0, 0, 0, 0, v])[5] for v in values]


async def _copy_bytes(pg: asyncpg.Connection, rows: int) -> bytes:
    out = io.BytesIO()
    await pg.copy_from_query(
        "SELECT to_timestamp(1704067200 + 60 * i), i * 1.5::float8, i * 2.5::float8, i * 0.5::float8,"
        " i * 1.25::float8, i / 3.0::float8"
        f" FROM generate_series(0, {rows - 1}) i", output=out, format="binary")
    return out.getvalue()


async def test_the_parser_cuts_any_chunking_into_the_same_batches(pg: asyncpg.Connection) -> None:
    data = await _copy_bytes(pg, 2500)
    rnd = random.Random(7)
    for _ in range(5):
        parser, blocks, pos = CopyParser(1000), [], 0
        while pos < len(data):
            step = rnd.choice([1, 2, 7, 74, 75, 1000, 20000])
            blocks += parser.feed(data[pos:pos + step])
            pos += step
        blocks.append(parser.finish())
        assert [len(b) // 74 for b in blocks] == [1000, 1000, 500] and parser.rows == 2500
        batches = [to_batch(b) for b in blocks]
        ts = np.concatenate([b.ts for b in batches])
        assert ts.tolist() == [T0 + 60_000 * i for i in range(2500)]
        assert np.concatenate([b.volume for b in batches]).tolist() == [round(i / 3.0, 8) for i in range(2500)]


async def seed(pg: asyncpg.Connection, days: int) -> int:
    bars = [sim_bar(42, "SIM/USD", t) for t in range(T0, T0 + days * DAY_MS, MINUTE_MS)]
    await storage.upsert_1m_bars(pg, SIM, bars, [(T0, T0 + days * DAY_MS)])
    return len(bars)


def small_batches(app: Quart, rows: int) -> Exporter:
    real = get_exporter(app)
    return Exporter(real.db, ExportSettings(batch_rows=rows))


async def test_the_stream_is_produced_batch_by_batch(app: Quart, pg: asyncpg.Connection) -> None:
    n = await seed(pg, 3)
    exporter = small_batches(app, 500)
    plan = exporter.plan(SIM, "1m", T0, T0 + 3 * DAY_MS)
    await exporter.check(plan)
    seen: list[tuple[int, int]] = []
    chunks = [c async for c in exporter.stream(plan, FORMATS["parquet"], None,
                                               lambda bars, last: seen.append((bars, last)))]
    assert len(chunks) == n // 500 + 2 + (n % 500 > 0)  # the magic, a row group each, the footer
    assert [b for b, _ in seen] == [500] * (n // 500) + ([n % 500] if n % 500 else [])
    assert seen[-1][1] == T0 + 3 * DAY_MS - MINUTE_MS
    meta = pq.ParquetFile(io.BytesIO(b"".join(chunks))).metadata
    assert meta.num_rows == n and meta.num_row_groups == -(-n // 500)


async def test_memory_does_not_grow_with_the_range(app: Quart, pg: asyncpg.Connection) -> None:
    """Python's allocations while streaming 180 days (259,200 bars: about 19 MB of COPY rows and
    12 MB of CSV with the sim's prices) stay within the read-ahead (``QUEUE_CHUNKS`` socket reads)
    and a batch or two of 2,000 bars: nothing holds the whole range."""
    await seed(pg, 180)
    exporter = small_batches(app, 2000)
    plan = exporter.plan(SIM, "1m", T0, T0 + 180 * DAY_MS)
    sizes: dict[str, Any] = {}
    for fmt in ("csv", "parquet"):
        warm = exporter.plan(SIM, "1m", T0, T0 + DAY_MS)  # first use: threads, Arrow's writers
        assert [c async for c in exporter.stream(warm, FORMATS[fmt], None)]
        tracemalloc.start()
        total = 0
        async for chunk in exporter.stream(plan, FORMATS[fmt], None):
            total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sizes[fmt] = (total, peak)
    assert sizes["csv"][0] > 10_000_000  # the answer is much larger than ...
    assert all(peak < 4_000_000 for _, peak in sizes.values()), sizes  # ... what was ever held


async def test_closing_the_stream_early_stops_the_copy(app: Quart, pg: asyncpg.Connection) -> None:
    await seed(pg, 3)
    exporter = small_batches(app, 200)
    plan = exporter.plan(SIM, "1m", T0, T0 + 3 * DAY_MS)
    stream = exporter.stream(plan, FORMATS["csv"], "gzip")
    got = [await anext(stream) for _ in range(3)]
    assert got[0]  # the gzip header and CSV's
    await stream.aclose()  # the client went away
    copies = await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT ts%'"
                               " AND state = 'active'")
    assert copies == 0
    # The connection went back to the pool: a full export still runs.
    assert len(b"".join([c async for c in exporter.stream(plan, FORMATS["csv"], None)]).splitlines()) == 4321


async def test_a_slot_is_held_by_its_stream_until_it_ends_fails_or_is_closed(app: Quart,
                                                                             pg: asyncpg.Connection) -> None:
    await seed(pg, 1)
    real = get_exporter(app)
    exporter = Exporter(real.db, ExportSettings(batch_rows=200, max_concurrent=1))
    plan = exporter.plan(SIM, "1m", T0, T0 + DAY_MS)
    held = exporter.reserve().hold(exporter.stream(plan, FORMATS["csv"], None))
    assert await anext(held)
    with pytest.raises(DataSourceError, match="EXPORT_MAX_CONCURRENT"):
        exporter.reserve()
    await held.aclose()  # closed early: the client left
    assert exporter.running == 0
    held = exporter.reserve().hold(exporter.stream(plan, FORMATS["csv"], None))
    assert len(b"".join([c async for c in held]).splitlines()) == 1441  # read to the end
    assert exporter.running == 0

    async def failing() -> AsyncGenerator[bytes, None]:  # a stream whose COPY fails midway
        yield b"ts,open,high,low,close,volume\n"
        raise RuntimeError("the COPY failed")

    held = exporter.reserve().hold(failing())
    assert await anext(held)
    with pytest.raises(RuntimeError, match="COPY failed"):
        await anext(held)
    assert exporter.running == 0
