"""Continuous aggregates vs query-time aggregation: one year of 1m bars of one symbol (525,600 rows,
loaded with COPY), then the latency of 500 1h bars and of 365 1d bars, read

- from the continuous aggregates on TimescaleDB (PGlite, PostgreSQL 17 in WebAssembly),
- aggregated at query time over the 1m hypertable on the same PGlite,
- aggregated at query time over the 1m table on plain PostgreSQL (the plain storage mode),

all through ``services.aggregates.select_bars``, in one run, with the ratios to the aggregate read.

    .venv/bin/python -m bench.aggregates [--days 365] [--repeat 7] [--tail-days 3]

``--tail-days`` leaves the last days unmaterialized for a second aggregate figure, where real-time
aggregation computes them from the 1m rows. Needs ``npm ci --prefix tests/support/pglite`` and PostgreSQL
at ``DATABASE_URL``. Figures are medians of ``--repeat`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from app_extensions.migrations import run_migrations
from config import TestingConfig, from_environ
from core.timeframes import DAY_MS, HOUR_MS, MINUTE_MS
from core.types import Series
from services.bars import aggregates
from tests.support.pglite.fixtures import run_pglite_server, unavailable_reason

DATABASE_URL = from_environ("DATABASE_URL")
SCHEMA = "bench_aggregates"
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, a Monday
SERIES = ("crypto", "binance", "BTC/USDT")
COPY_BATCH = 100_000


def year_of_bars(days: int) -> list[tuple[object, ...]]:
    rnd, price = random.Random(42), 40_000.0
    rows: list[tuple[object, ...]] = []
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for i in range(days * 1440):
        o = price
        price = max(1.0, price + rnd.gauss(0, 20))
        hi, lo = max(o, price) + abs(rnd.gauss(0, 5)), min(o, price) - abs(rnd.gauss(0, 5))
        ts = epoch + timedelta(milliseconds=T0 + i * MINUTE_MS)
        rows.append((*SERIES, ts, o, hi, lo, price, rnd.random() * 10))
    return rows


async def prepare(url: str, mode: str, rows: list[tuple[object, ...]]) -> tuple[asyncpg.Connection, float]:
    """Fresh schema, migrations, COPY of ``rows``; returns the connection and the load seconds."""
    conn = await asyncpg.connect(url, server_settings={"search_path": f"{SCHEMA},public"},
                                 command_timeout=3600)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    config = {**aggregates.TIMESCALE_SETTINGS, **TestingConfig().as_dict(),
              "DATABASE_SCHEMA": SCHEMA, "STORAGE_MODE": mode}
    assert await run_migrations(conn, config) == mode
    start = time.perf_counter()
    for i in range(0, len(rows), COPY_BATCH):
        await conn.copy_records_to_table("ohlcv_1m", records=rows[i : i + COPY_BATCH])
    await conn.execute("ANALYZE ohlcv_1m")
    return conn, time.perf_counter() - start


async def timed(fn: Callable[[], Awaitable[list[list[float]]]], repeat: int, want: int) -> float:
    """Median milliseconds of ``fn`` (after one warm-up); checks it returns ``want`` bars."""
    got = await fn()
    assert len(got) == want, (len(got), want)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def reader(conn: asyncpg.Connection, mode: str, tf: str, start: int, end: int, limit: int
           ) -> Callable[[], Awaitable[list[list[float]]]]:
    return lambda: aggregates.select_bars(conn, mode, Series(*SERIES), tf, start, end, limit)


async def main(args: argparse.Namespace) -> None:
    rows = year_of_bars(args.days)
    end = T0 + args.days * DAY_MS
    queries = {  # name: (timeframe, start, end, bars)
        "500 x 1h": ("1h", end - 500 * HOUR_MS, end, 500),
        f"{args.days} x 1d": ("1d", T0, end, args.days),
    }
    print(f"{len(rows):,} 1m bars of one symbol, {args.days} days from 2024-01-01; medians of {args.repeat}")
    with run_pglite_server() as pglite_url:
        plain, plain_load = await prepare(DATABASE_URL, "plain", rows)
        ts, ts_load = await prepare(pglite_url, "timescale", rows)
        try:
            start = time.perf_counter()
            await aggregates.refresh_all(ts, "timescale", end - args.tail_days * DAY_MS)
            refresh_s = time.perf_counter() - start
            print(f"COPY: PostgreSQL {plain_load:.1f} s, PGlite {ts_load:.1f} s;"
                  f" materializing the 6 aggregates on PGlite: {refresh_s:.1f} s"
                  f" (all but the last {args.tail_days} days)")
            tails = {name: await timed(reader(ts, "timescale", tf, a, b, n), args.repeat, n)
                     for name, (tf, a, b, n) in queries.items()}
            await aggregates.refresh_all(ts, "timescale")
            for name, (tf, a, b, n) in queries.items():
                cagg = await timed(reader(ts, "timescale", tf, a, b, n), args.repeat, n)
                pglite_qt = await timed(reader(ts, "plain", tf, a, b, n), args.repeat, n)
                pg_qt = await timed(reader(plain, "plain", tf, a, b, n), args.repeat, n)
                tail = tails[name]
                print(f"\n{name}:")
                print(f"  continuous aggregate, PGlite (all materialized)       {cagg:9.2f} ms")
                print(f"  continuous aggregate, PGlite (last {args.tail_days} days real-time)  "
                      f"{tail:9.2f} ms  ({tail / cagg:.1f}x)")
                print(f"  query-time over 1m hypertable, PGlite                 {pglite_qt:9.2f} ms"
                      f"  ({pglite_qt / cagg:.1f}x the aggregate)")
                print(f"  query-time over 1m table, PostgreSQL 15 (plain mode)  {pg_qt:9.2f} ms"
                      f"  ({pg_qt / cagg:.1f}x the aggregate on PGlite)")
        finally:
            if not args.keep:
                for conn in (plain, ts):
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
            await plain.close()
            await ts.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tail-days", type=int, default=3,
                        help="days left to real-time aggregation for the second aggregate figure")
    parser.add_argument("--keep", action="store_true", help="keep the bench schema afterwards")
    arguments = parser.parse_args()
    if (reason := unavailable_reason()) is not None:
        raise SystemExit(f"bench.aggregates: {reason}")
    asyncio.run(main(arguments))
