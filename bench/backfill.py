"""Backfill throughput: 1m bars of one symbol from a provider that is not the limit, beside the
raw PostgreSQL COPY rate of the same rows into the same table, as a ratio.

    .venv/bin/python -m bench.backfill [--provider sim|binance|both] [--days 366]
                                       [--concurrency 4] [--no-cache] [--rounds 1]
                                       [--weight-limit 120 [--budget 114/60/4]] [--no-ccxt-throttle]

``sim`` (the goal's figure): the sim plugin, the deterministic offline market, computes the bars in
this process; ``binance``: the exchange emulator in its own process (``python -m
tests.support.exchange_emulator``, latency 0) through the CCXT crypto plugin (HTTP, parsing, error
translation). Both go through the whole production path: the provider-call path (budget, breaker,
metrics), the per-provider semaphore, fetchers and one writer (a batch of chunks per transaction:
binary COPY + ledger + job-free progress, an aggregate refresh) and the Redis 1m cache (its latest
``BACKFILL_CACHE_DAYS`` only: 2024 does not go there). ``both`` (the default without
``--weight-limit``) runs the sim, then binance. The printed CPU per bar is this process's
(the emulator's and PostgreSQL's not included).

Without ``--weight-limit`` the exchange is not the limit: the outbound budget is off and the run
measures our own path against raw COPY. ``--weight-limit N`` makes the emulator enforce Binance's
request weight (N per minute, 429 then 418 bans), and the binance budget defaults to 0.95 x N
weight per minute with a burst of 4 (the built-in one is 5700/60/60 for Binance's 6000). Then it
prints the ratio to the sustained ceiling (N / 2 klines calls per minute x 1000 bars) and the
emulator's 429/418 counts. Backfill at least ~100 days at N=120 so the run spans several weight
windows (over two minutes). ``--no-ccxt-throttle`` switches off CCXT's client-side throttle where
the plugin still has it on (exchanges without stated weights; Binance's is off already).
The COPY baseline then truncates the series and COPYs the very same rows back into ``ohlcv_1m``
(``copy_records_to_table``, one transaction). Each of ``--rounds`` rounds does both, each phase
after a ``CHECKPOINT``, and prints its ratio; with more than one the median follows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import asyncpg

from app import create_app
from app_extensions.services import get_services
from bench.common import drop_bench_data, free_port
from config import from_environ
from core.timeframes import DAY_MS
from core.types import Series

DATABASE_URL = from_environ("DATABASE_URL")
REDIS_URL = from_environ("REDIS_URL")
SCHEMA, PREFIX = "bench_backfill", "bench_backfill"
T0 = 1_704_067_200_000  # 2024-01-01, the emulator's first candle
SERIES = Series("crypto", "binance", "BTC/USDT")
SIM = Series("sim", "sim", "SIM/USD")


def start_emulator(port: int, weight_limit: int | None) -> subprocess.Popen[bytes]:
    limit = [] if weight_limit is None else ["--weight-limit", str(weight_limit)]
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.exchange_emulator", "--port", str(port),
                             *limit], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # "exchange emulator on ..." once it listens
    return proc


async def reset_storage() -> None:
    await drop_bench_data(DATABASE_URL, SCHEMA, REDIS_URL, PREFIX)


async def emulator_weights(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/__emulator/weights") as resp:
        return dict(await resp.json())


async def run_backfill(url: str | None, days: int, concurrency: int, cache: bool, throttle: bool,
                       budget: str) -> dict[str, Any]:
    """Backfill ``days`` from T0: from the sim plugin (``url`` None) or binance at ``url``."""
    series = SIM if url is None else SERIES
    app = create_app({
        "DATABASE_SCHEMA": SCHEMA, "REDIS_PREFIX": PREFIX, "LOG_LEVEL": "WARNING",
        "PROVIDER_URLS": {"binance": url} if url else {}, "CCXT_EXCHANGES": "binance",
        "PROVIDER_BUDGETS": {"binance": budget}, "BACKFILL_RUNNER": False,
        # At a scaled-down limit (1 call/s) the workers queue for seconds: wait, do not fail.
        "PROVIDER_BUDGET_MAX_WAIT": 30.0,
        "BACKFILL_CONCURRENCY": concurrency, "BACKFILL_WRITE_CACHE": cache,
        "DB_POOL_MAX": max(10, concurrency + 2),
    })
    async with app.test_app():
        services = get_services(app)
        throttled = False
        if url is not None:
            plugin: Any = await services.markets.get_plugin("crypto", "binance")
            if not throttle:
                (await plugin._ready()).enableRateLimit = False
            throttled = bool((await plugin._ready()).enableRateLimit)
        end = T0 + days * DAY_MS
        started, cpu = time.perf_counter(), time.process_time()
        progress = await services.backfill.backfill(series, T0, end)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        gaps = await services.backfill.gaps(series, T0, end)
    assert gaps == {"missing": [], "verified_empty": []}, gaps
    weights = await emulator_weights(url) if url is not None else {}
    return {"bars": progress.bars_written, "seconds": seconds, "calls": progress.calls,
            "weights": weights, "throttled": throttled, "cpu": cpu}


async def copy_baseline() -> dict[str, Any]:
    conn = await asyncpg.connect(DATABASE_URL, server_settings={"search_path": SCHEMA})
    try:
        rows = await conn.fetch("SELECT * FROM ohlcv_1m ORDER BY ts")
        records = [tuple(r) for r in rows]
        await conn.execute("TRUNCATE ohlcv_1m")
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table("ohlcv_1m", records=records)
        seconds = time.perf_counter() - started
        assert await conn.fetchval("SELECT count(*) FROM ohlcv_1m") == len(records)
    finally:
        await conn.close()
    return {"bars": len(records), "seconds": seconds}


async def checkpoint() -> None:
    """Flush dirty buffers before a timed phase, so that neither phase pays for the other's
    writes (a checkpoint falling inside one of them moves its figure by a third)."""
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        pass  # not a superuser: the phases run as they fall
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    providers = ["sim", "binance"] if args.provider == "both" else [args.provider]
    for provider in providers:
        ratios = []
        for _ in range(args.rounds):
            await reset_storage()
            ratios.append(await one_run(args, provider))
        if len(ratios) > 1:
            shown = ", ".join(f"{r:.3f}" for r in ratios)
            print(f"{provider}: ratio backfill / raw COPY: median {statistics.median(ratios):.3f}"
                  f" over {len(ratios)} rounds ({shown})")
    if not args.keep:
        await reset_storage()


async def one_run(args: argparse.Namespace, provider: str) -> float:
    """One round: the backfill, then the raw COPY of its rows; returns their ratio."""
    await checkpoint()
    if provider == "sim":
        fill = await run_backfill(None, args.days, args.concurrency, not args.no_cache, True, "off")
    else:
        proc = start_emulator(args.port, args.weight_limit)
        try:
            url = f"http://127.0.0.1:{args.port}"
            fill = await run_backfill(url, args.days, args.concurrency, not args.no_cache,
                                      not args.no_ccxt_throttle, args.budget)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    await checkpoint()
    copy = await copy_baseline()
    fill_rate, copy_rate = fill["bars"] / fill["seconds"], copy["bars"] / copy["seconds"]
    print(f"{provider} backfill: {fill['bars']:,} bars in {fill['seconds']:.1f} s = {fill_rate:,.0f} bars/s"
          f" ({fill['calls']} calls, concurrency {args.concurrency},"
          f" cache {'off' if args.no_cache else 'on'}"
          + ("" if provider == "sim" else
             f", CCXT throttle {'on' if fill['throttled'] else 'off'}, budget {args.budget}")
          + f"; {fill['cpu'] / fill['bars'] * 1e6:.1f} µs CPU per bar in this process)")
    weights = fill["weights"]
    if args.weight_limit is not None:
        ceiling = args.weight_limit / 2 / 60 * 1000  # klines weight 2 per 1000 bars, per second
        print(f"weight limit {args.weight_limit}/min: sustained ceiling {ceiling:,.0f} bars/s;"
              f" ratio to ceiling {fill_rate / ceiling:.3f}; 429s {weights['refused_429']},"
              f" 418s {weights['refused_418']}, bans {weights['bans']}")
    print(f"raw COPY: {copy['bars']:,} rows in {copy['seconds']:.2f} s = {copy_rate:,.0f} rows/s")
    print(f"{provider}: ratio backfill / raw COPY: {fill_rate / copy_rate:.3f}")
    return float(fill_rate / copy_rate)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=366, help="days from 2024-01-01 (366: 2024)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="emulator port (0: a free one)")
    parser.add_argument("--no-cache", action="store_true", help="do not write the Redis 1m cache")
    parser.add_argument("--no-ccxt-throttle", action="store_true",
                        help="switch off CCXT's client-side throttle (enableRateLimit)")
    parser.add_argument("--weight-limit", type=int, default=None,
                        help="the emulator enforces Binance's request weight: this much per minute")
    parser.add_argument("--budget", default=None,
                        help="PROVIDER_BUDGETS for binance (default: 0.95 x the weight limit per"
                             " minute, burst 4, as the built-in 5700/60/60 is for 6000; else off)")
    parser.add_argument("--provider", choices=("sim", "binance", "both"), default=None,
                        help="the sim plugin (in process), binance through the emulator, or both"
                             " (the default; binance only with --weight-limit)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of backfill then raw COPY (each printed, then the median"
                             " ratio): the box's speed drifts, a round pairs figures taken together")
    parser.add_argument("--keep", action="store_true", help="keep the bench schema afterwards")
    arguments = parser.parse_args()
    if arguments.budget is None:
        limit = arguments.weight_limit
        arguments.budget = "off" if limit is None else f"{int(limit * 0.95)}/60/4"
    if arguments.provider is None:
        arguments.provider = "both" if arguments.weight_limit is None else "binance"
    if arguments.provider != "binance" and arguments.weight_limit is not None:
        parser.error("--weight-limit applies to binance (the emulator) only")
    if arguments.port == 0:
        arguments.port = free_port()
    asyncio.run(main(arguments))
