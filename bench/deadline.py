"""The slowest answer under a 30 s exchange delay, with the default ``REQUEST_DEADLINE`` (10 s).

    .venv/bin/python -m bench.deadline

The app is served by ``app.test_app()`` in front of the exchange emulator (``PROVIDER_URLS``). One
hour of BTC/USDT 1m is stored first; then every klines, ticker and markets call of the emulator is
delayed by 30 s and each endpoint is asked once: a stored range (answered from storage, marked
incomplete), a range nothing stored covers (503 provider_unavailable), the ticker and the latest
bars. Prints each answer's status and time, then the slowest.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import bench_app
from core.timeframes import MINUTE_MS
from tests.support.backfill import KLINES, T0
from tests.support.exchange_emulator import ExchangeEmulator

DELAY = 30.0
BASE = "/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT&timeframe=1m"


async def main() -> None:
    emu = ExchangeEmulator()
    await emu.start()
    config = {"APP_ENV": "production", "LOG_LEVEL": "ERROR", "PROVIDER_URLS": {"binance": emu.url},
              "CCXT_EXCHANGES": "binance", "BACKFILL_RUNNER": False, "RATE_LIMITS": {}}
    cases = [
        ("stored range, one more hour asked", f"{BASE}&start={T0}&end={T0 + 120 * MINUTE_MS}&limit=120"),
        ("nothing stored", f"{BASE}&start={T0 + 1440 * MINUTE_MS}&end={T0 + 1500 * MINUTE_MS}&limit=60"),
        ("ticker", "/api/v1/ticker?market=crypto&provider=binance&symbol=BTC/USDT"),
        ("latest bars", f"{BASE}&limit=100"),
    ]
    worst = 0.0
    try:
        async with bench_app("dl", config) as app:
            deadline = float(app.config["REQUEST_DEADLINE"])
            client = app.test_client()
            await client.get("/api/v1/symbols?market=crypto&provider=binance")
            stored = await client.get(f"{BASE}&start={T0}&end={T0 + 60 * MINUTE_MS}&limit=60")
            assert stored.status_code == 200, await stored.get_data()
            for path in (KLINES, "/api/v3/ticker/24hr", "/api/v3/ticker/bookTicker",
                         "/api/v3/exchangeInfo"):
                emu.inject(path, delay=DELAY, times=None)
            print(f"exchange delay {DELAY:g} s, REQUEST_DEADLINE {deadline:g} s")
            for label, url in cases:
                began = time.monotonic()
                r = await client.get(url)
                took = time.monotonic() - began
                worst = max(worst, took)
                flags = ",".join(k for k in ("X-Data-Incomplete", "X-Data-Stale", "Retry-After")
                                 if k in r.headers)
                print(f"{label:<36} {r.status_code}  {took:6.2f} s  {flags}")
            print(f"slowest answer {worst:.2f} s = {worst / deadline:.2f} x REQUEST_DEADLINE")
            emu.clear_faults()
    finally:
        await emu.stop()


if __name__ == "__main__":
    asyncio.run(main())
