"""Bulk export: a year of 1m bars as one Parquet answer, against paging ``/ohlcv`` JSON for the
same bars and against PostgreSQL's own ``COPY (SELECT ...) TO STDOUT`` of those rows; the
server's RSS growth while it streams 5 million bars; and the bars of every timeframe against
``/ohlcv``. Ratios from one run.

    .venv/bin/python -m bench.export [--quick] [--bars 5000000] [--year-bars 525600] [--keep]

The server is the app under Hypercorn (``--workers 1``) in a subprocess, on its own schema
``bench_export`` (rate limits off). The 1m series ``sim:sim:SIM/USD`` is generated inside
PostgreSQL (``INSERT ... SELECT generate_series``: ``--bars`` minutes from 2015-01-01, random
prices and volumes with full float digits) and recorded complete in the gap ledger, so both
``/export`` and ``/ohlcv`` answer it from storage. Figures printed:

- ``parquet``: ``GET /export?format=parquet`` of the first ``--year-bars`` minutes, read into a
  pyarrow Table (request to table, end to end);
- ``ohlcv pages``: the same bars paged through ``/ohlcv`` (``limit=5000``, one request after the
  other, as a client follows ``next``), JSON decoded: first cold (nothing cached), then warm
  (every page cached in Redis and in process); the ratio is taken against both;
- ``raw COPY``: ``COPY (SELECT ts, open, high, low, close, volume ... ORDER BY ts) TO STDOUT``
  (text) of the same rows, by this process straight from PostgreSQL;
- ``RSS``: the server's resident memory (its process tree, from /proc, sampled every 20 ms) before
  and during ``GET /export?format=parquet`` of all ``--bars`` bars (after a warm-up export of a
  day), the client reading and dropping the body;
- ``equal``: every timeframe's export (Parquet) of 30 days against ``/ohlcv``'s pages: bars equal.

``--quick``: 600,000 bars and a 30-day "year", for a run of a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import threading
import time
from typing import Any

import aiohttp
import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import drop_bench_data, free_port, hypercorn_server
from config import from_environ
from core.timeframes import DAY_MS, MINUTE_MS, TIMEFRAMES

DATABASE_URL = from_environ("DATABASE_URL")
REDIS_URL = from_environ("REDIS_URL")
SCHEMA, PREFIX = "bench_export", "bench_export"
T0 = 1_420_070_400_000  # 2015-01-01 00:00 UTC
SERIES = "market=sim&provider=sim&symbol=SIM/USD"
_GENERATE = """
INSERT INTO ohlcv_1m (market, provider, symbol, ts, open, high, low, close, volume)
SELECT 'sim', 'sim', 'SIM/USD', to_timestamp($1::float8 / 1000 + 60 * i), o,
       greatest(o, c) + random(), least(o, c) - random(), c, random() * 100
FROM generate_series($2::bigint, $3::bigint - 1) AS i,
     LATERAL (SELECT 100 + 20 * sin(i / 5000.0) + random() AS o, 100 + 20 * sin((i + 1) / 5000.0) + random() AS c) p
"""


async def load(bars: int) -> None:
    """Generate ``bars`` 1m bars from T0 (in PostgreSQL, 500,000 per statement) and record them
    complete in the ledger; skipped when the schema holds them already (``--keep``)."""
    conn = await asyncpg.connect(DATABASE_URL, server_settings={"search_path": SCHEMA}, command_timeout=3600)
    try:
        have = await conn.fetchval("SELECT count(*) FROM ohlcv_1m WHERE symbol = 'SIM/USD'")
        if have == bars:
            print(f"data: {bars:,} bars kept from an earlier run")
            return
        await conn.execute("TRUNCATE ohlcv_1m, fetched_ranges")
        started = time.perf_counter()
        for a in range(0, bars, 500_000):
            await conn.execute(_GENERATE, T0, a, min(bars, a + 500_000))
        await conn.execute("INSERT INTO fetched_ranges (market, provider, symbol, start_ms, end_ms)"
                           " VALUES ('sim', 'sim', 'SIM/USD', $1, $2)", T0, T0 + bars * MINUTE_MS)
        await conn.execute("VACUUM ANALYZE ohlcv_1m")
        print(f"data: {bars:,} bars generated in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()


async def export_table(session: aiohttp.ClientSession, base: str, tf: str, start: int, end: int) -> pa.Table:
    async with session.get(f"{base}/api/v1/export?{SERIES}&timeframe={tf}&start={start}&end={end}"
                           "&format=parquet") as resp:
        assert resp.status == 200, await resp.text()
        return pq.read_table(io.BytesIO(await resp.read()))


async def ohlcv_pages(session: aiohttp.ClientSession, base: str, tf: str, start: int, end: int) -> list[list[float]]:
    bars: list[list[float]] = []
    nxt: int | None = start
    while nxt is not None:
        async with session.get(f"{base}/api/v1/ohlcv?{SERIES}&timeframe={tf}&start={nxt}&end={end}"
                               "&limit=5000") as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        bars += body["bars"]
        nxt = body["next"]
    return bars


def rows(table: pa.Table) -> list[list[float]]:
    cols = table.to_pydict()
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    return [[t, *v] for t, *v in zip(ts, cols["open"], cols["high"], cols["low"], cols["close"],
                                      cols["volume"], strict=True)]


async def raw_copy(start: int, end: int) -> tuple[float, int]:
    conn = await asyncpg.connect(DATABASE_URL, server_settings={"search_path": SCHEMA}, command_timeout=3600)
    received = 0

    async def sink(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    try:
        began = time.perf_counter()
        await conn.copy_from_query(
            "SELECT ts, open, high, low, close, volume FROM ohlcv_1m WHERE market = 'sim' AND provider = 'sim'"
            f" AND symbol = 'SIM/USD' AND ts >= to_timestamp({start / 1000}) AND ts < to_timestamp({end / 1000})"
            " ORDER BY ts", output=sink)
        return time.perf_counter() - began, received
    finally:
        await conn.close()


def family_rss(root: int) -> int:
    """Resident bytes of ``root`` and its descendants (Hypercorn's worker), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    family = {root} | {pid for pid, ppid in parents.items() if ppid == root}
    total = 0
    for pid in family:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


async def rss_while_exporting(session: aiohttp.ClientSession, base: str, pid: int, bars: int) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/export?{SERIES}&start={T0}&end={T0 + DAY_MS}&format=parquet") as r:
        await r.read()  # warm-up: threads, Arrow's writers, the pool's connection
    before = family_rss(pid)
    peak, stop = before, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, family_rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    received, began = 0, time.perf_counter()
    try:
        async with session.get(f"{base}/api/v1/export?{SERIES}&start={T0}&end={T0 + bars * MINUTE_MS}"
                               "&format=parquet") as resp:
            assert resp.status == 200, await resp.text()
            async for chunk in resp.content.iter_chunked(1 << 20):
                received += len(chunk)
    finally:
        stop.set()
        sampler.join()
    return {"before": before, "peak": peak, "bytes": received, "seconds": time.perf_counter() - began}


async def main(args: argparse.Namespace) -> None:
    await drop_bench_data(DATABASE_URL, SCHEMA, REDIS_URL, PREFIX) if not args.keep else None
    env = {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "DATABASE_SCHEMA": SCHEMA,
           "REDIS_PREFIX": PREFIX, "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING",
           "APP_ENV": "production", "WARMUP_ENABLED": "false"}
    timeout = aiohttp.ClientTimeout(total=None)
    with hypercorn_server("app:create_app()", free_port(), env) as server:
        base = server.base
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{base}/health/ready") as resp:
                await resp.read()  # migrations ran
            await load(max(args.bars, args.year_bars))
            year_end = T0 + args.year_bars * MINUTE_MS
            await raw_copy(T0, year_end)  # warm PostgreSQL's cache for every phase alike
            began = time.perf_counter()
            table = await export_table(session, base, "1m", T0, year_end)
            parquet_s = time.perf_counter() - began
            began = time.perf_counter()
            cold = await ohlcv_pages(session, base, "1m", T0, year_end)
            cold_s = time.perf_counter() - began
            began = time.perf_counter()
            warm = await ohlcv_pages(session, base, "1m", T0, year_end)
            warm_s = time.perf_counter() - began
            copy_s, copy_bytes = await raw_copy(T0, year_end)
            began = time.perf_counter()
            table = await export_table(session, base, "1m", T0, year_end)  # again, after the others
            parquet_s = min(parquet_s, time.perf_counter() - began)
            n = table.num_rows
            assert n == args.year_bars == len(cold) == len(warm)
            assert rows(table) == cold == warm
            pages = -(-n // 5000)
            print(f"\n{n:,} 1m bars (a {'30-day quick range' if args.quick else 'year'}):")
            print(f"  parquet export, request to table  {parquet_s:8.3f} s  {n / parquet_s:12,.0f} bars/s")
            print(f"  /ohlcv JSON, {pages} pages, cold      {cold_s:8.3f} s  ratio {cold_s / parquet_s:6.1f}x"
                  " (goal >= 10x)")
            print(f"  /ohlcv JSON, {pages} pages, warm      {warm_s:8.3f} s  ratio {warm_s / parquet_s:6.1f}x")
            print(f"  raw COPY TO STDOUT (text)         {copy_s:8.3f} s  {copy_bytes / 2**20:.1f} MiB;"
                  f" export's speed / COPY's {copy_s / parquet_s:.2f}x (goal >= 0.5x)")

            rss = await rss_while_exporting(session, base, server.pid, args.bars)
            growth = (rss["peak"] - rss["before"]) / 2**20
            print(f"\nRSS while exporting {args.bars:,} bars as Parquet ({rss['bytes'] / 2**20:.0f} MiB in"
                  f" {rss['seconds']:.1f} s, {args.bars / rss['seconds']:,.0f} bars/s): before"
                  f" {rss['before'] / 2**20:.1f} MiB, peak {rss['peak'] / 2**20:.1f} MiB,"
                  f" growth {growth:.1f} MiB (goal < 64 MiB)")

            start, end = T0 + 7 * MINUTE_MS, T0 + 30 * DAY_MS - 13 * MINUTE_MS
            equal = total = 0
            per_tf = []
            for tf in TIMEFRAMES:
                got = rows(await export_table(session, base, tf, start, end))
                want = await ohlcv_pages(session, base, tf, start, end)
                same = sum(1 for a, b in zip(got, want, strict=False) if a == b)
                equal, total = equal + same, total + max(len(got), len(want))
                per_tf.append(f"{tf} {same}/{max(len(got), len(want))}")
            print(f"\nbars equal to /ohlcv, every timeframe over 30 days: {equal:,}/{total:,}"
                  f" = {100 * equal / total:.2f} % (goal 100 %)\n  " + ", ".join(per_tf))
    if not args.keep:
        await drop_bench_data(DATABASE_URL, SCHEMA, REDIS_URL, PREFIX)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="600,000 bars and a 30-day range")
    parser.add_argument("--bars", type=int, default=5_000_000, help="bars of the RSS figure's export")
    parser.add_argument("--year-bars", type=int, default=525_600, help="bars of the Parquet / JSON / COPY figures")
    parser.add_argument("--keep", action="store_true", help="keep the bench schema (and its data) afterwards")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.bars, arguments.year_bars = 600_000, 43_200
    asyncio.run(main(arguments))
