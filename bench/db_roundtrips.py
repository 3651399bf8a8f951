"""Database round trips per /ohlcv cache miss, counted with a wrapper on asyncpg's Connection.

    .venv/bin/python -m bench.db_roundtrips

The app is built as in ``bench.provider_path`` (exchange emulator behind ``PROVIDER_URLS``). Every
statement a connection sends (``execute`` — also BEGIN/COMMIT of transactions —, ``fetch*``,
``copy_records_to_table``), the pool's reset on release included, is counted. Three misses are measured:
a cold range (fetched from the provider and written), the same range again with the answer cache
dropped (answered from storage), and a cold latest-bars query.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable
from typing import Any

import asyncpg

from bench.common import bench_app
from core.timeframes import MINUTE_MS, now_ms
from tests.support.exchange_emulator import ExchangeEmulator

#: ``reset`` (on release to the pool) sends its query through ``execute``: counted there.
COUNTED = ("execute", "executemany", "fetch", "fetchrow", "fetchval", "copy_records_to_table")
counts: collections.Counter[str] = collections.Counter()


def _counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return await fn(*args, **kwargs)

    return wrapper


def install() -> None:
    for name in COUNTED:
        setattr(asyncpg.connection.Connection, name,
                _counting(name, getattr(asyncpg.connection.Connection, name)))


async def main() -> None:
    install()
    emu = ExchangeEmulator()
    await emu.start()
    config = {"APP_ENV": "testing", "LOG_LEVEL": "WARNING", "PROVIDER_URLS": {"binance": emu.url},
              "BACKFILL_RUNNER": False}
    end = (now_ms() // MINUTE_MS - 600) * MINUTE_MS
    base = "/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT"
    cases = [
        ("cold range 1m x500 (provider)", f"{base}&timeframe=1m&start={end - 500 * MINUTE_MS}"
                                          f"&end={end}&limit=500", False),
        ("same range, answer cache dropped", f"{base}&timeframe=1m&start={end - 500 * MINUTE_MS}"
                                             f"&end={end}&limit=500", True),
        ("cold latest 5m x100", f"{base}&timeframe=5m&limit=100", False),
    ]
    try:
        async with bench_app("rt", config) as app:
            client = app.test_client()
            await client.get("/api/v1/symbols?market=crypto&provider=binance")
            redis = app.extensions["redis"]
            for label, url, drop in cases:
                if drop:
                    keys = await redis.run(lambda r: r.keys(redis.key("ans2", "*")))
                    if keys:
                        await redis.run(lambda r, k=keys: r.delete(*k))
                counts.clear()
                resp = await client.get(url)
                assert resp.status_code == 200, await resp.get_data()
                detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                print(f"{label:<36} round trips {sum(counts.values()):>3}  ({detail})")
    finally:
        await emu.stop()


if __name__ == "__main__":
    asyncio.run(main())
