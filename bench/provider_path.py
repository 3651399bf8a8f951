"""A cold 5000-bar /ohlcv request through the exchange emulator: wall time and upstream calls.

    .venv/bin/python -m bench.provider_path [--bars 5000] [--latency 0.05] [--plugin-only]

The emulator runs in-process and the app is built with ``PROVIDER_URLS`` pointing at it, so the
request takes the real path (blueprint, orchestrator, storage, cache, CCXT ``binance``). The
minimum possible number of klines calls is ``ceil(bars / 1000)`` (Binance's page size). A second,
warm request shows how many calls the repeat costs. ``--plugin-only`` (or an app that cannot
start, e.g. no PostgreSQL) pages through ``CryptoPlugin`` directly instead. ``--latency`` adds a
per-request delay to the emulator to mimic a real exchange's round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.common import bench_app
from config import TestingConfig
from core.timeframes import MINUTE_MS
from plugins.crypto import CryptoPlugin
from services.upstream.market_service import plugin_settings
from tests.support.exchange_emulator import ExchangeEmulator

START = 1_704_067_200_000  # 2024-01-01 00:00 UTC
KLINES = "/api/v3/klines"


def report(label: str, wall: float, bars: int, calls: int, minimum: int) -> None:
    print(f"{label:<14} {bars:>6} bars in {wall * 1000:8.1f} ms, klines calls {calls} "
          f"(minimum {minimum})")


async def through_app(emu: ExchangeEmulator, bars: int, minimum: int) -> None:
    config = {"APP_ENV": "testing", "LOG_LEVEL": "WARNING", "PROVIDER_URLS": {"binance": emu.url}}
    end = START + bars * MINUTE_MS
    url = (f"/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT&timeframe=1m"
           f"&start={START}&end={end}&limit={bars}")
    async with bench_app("provider", config) as app:
        client = app.test_client()
        for label in ("cold (app)", "warm (app)"):
            before = emu.calls(KLINES)
            started = time.perf_counter()
            resp = await client.get(url)
            wall = time.perf_counter() - started
            body: dict[str, Any] = await resp.get_json()
            assert resp.status_code == 200, body
            report(label, wall, len(body["bars"]), emu.calls(KLINES) - before,
                   minimum if label.startswith("cold") else 0)


async def through_plugin(emu: ExchangeEmulator, bars: int, minimum: int) -> None:
    plugin = CryptoPlugin("binance", base_url=emu.url, settings=plugin_settings(TestingConfig().as_dict()))
    end, per_call = START + bars * MINUTE_MS, plugin.capabilities.max_bars_per_call
    try:
        await plugin.fetch_symbols()  # markets are loaded once per process, not per request
        before, started = emu.calls(KLINES), time.perf_counter()
        got, since = 0, START
        while since < end:
            page = await plugin.fetch_ohlcv("BTC/USDT", "1m", since, per_call, end)
            got += len(page)
            if len(page) < per_call:
                break
            since = int(page[-1][0]) + MINUTE_MS
        report("cold (plugin)", time.perf_counter() - started, got, emu.calls(KLINES) - before,
               minimum)
    finally:
        await plugin.close()


async def main(bars: int, latency: float, plugin_only: bool) -> None:
    emu = ExchangeEmulator()
    await emu.start()
    emu.latency = latency
    minimum = math.ceil(bars / 1000)
    try:
        if not plugin_only:
            try:
                await through_app(emu, bars, minimum)
                return
            except (OSError, asyncpg.PostgresError, aioredis.RedisError) as exc:
                print(f"app path unavailable ({type(exc).__name__}: {exc}); plugin paging only")
        await through_plugin(emu, bars, minimum)
    finally:
        await emu.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.0, help="emulator delay per request (s)")
    parser.add_argument("--plugin-only", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.bars, args.latency, args.plugin_only))
