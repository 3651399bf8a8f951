"""Cache warming at start (services/bars/warmup.py, app_extensions/warmup.py): what was live and most
asked is prefetched by a restarted instance within its time and call budgets, and shutdown stops
it at once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from app import create_app
from app_extensions.warmup import get_warmup
from core.types import Series
from services.bars.query import BarQuery
from tests.conftest import REDIS_URL
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.helpers import sim_calls
from tests.support.ws import wait_for

emulator = fixtures.emulator
#: Two days ago at 00:00 UTC: recent, as the dashboards warmed are (Redis caches only the last
#: CACHE_RECENT_SECONDS; older history is answered from the database).
T0 = (int(time.time()) // 86_400 - 2) * 86_400_000
#: Days of past ranges for the budget tests (no cache involved).
OLD = 1_704_067_200_000  # 2024-01-01
SIM = "/api/v1/ohlcv?market=sim&provider=sim&timeframe=1h&limit=24&start="
R1 = SIM + str(T0) + "&symbol=SIM/USD"
R2 = SIM + str(T0 + 86_400_000) + "&symbol=SIMA/USD"
CHANNEL = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIMB/EUR",
           "timeframe": "5m", "history": 3}


async def drop_caches(prefix: str) -> None:
    """Everything under the test's prefix but the warm-up records: a cold cache."""
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*") if b":warm:" not in k]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_a_restarted_instance_answers_recent_dashboards_from_cache(
    app_config: dict[str, Any], redis_prefix: str
) -> None:
    cfg = {**app_config, "RATE_LIMIT_ENABLED": False}
    first = create_app({**cfg, "WARMUP_ENABLED": False})
    async with first.test_app():
        client = first.test_client()
        for url in (R1, R1, R1, R2):
            assert (await client.get(url)).status_code == 200
        async with client.websocket("/api/v1/ws") as ws:
            await ws.send(json.dumps(CHANNEL))
            assert json.loads(await asyncio.wait_for(ws.receive(), 5))["type"] == "subscribed"
            await get_warmup(first).warmer.record()  # as its loop does every few seconds
    await drop_caches(redis_prefix)
    second = create_app(cfg)
    async with second.test_app():
        warming = get_warmup(second).warming
        assert warming is not None
        report = await asyncio.wait_for(warming, 20)
        assert report.stopped == "done" and report.failed == 0 and report.queries == 3
        # the live channel first, then the ranges by how often they were asked
        assert report.warmed == ["sim:sim:SIMB/EUR:5m", "sim:sim:SIM/USD:1h", "sim:sim:SIMA/USD:1h"]
        calls = sim_calls(second)
        for url in (R1, R2):
            r = await second.test_client().get(url)
            assert r.status_code == 200 and r.headers["X-Data-Source"] == "cache"
        assert sim_calls(second) == calls


async def seed(cfg: dict[str, Any], queries: list[BarQuery]) -> None:
    app = create_app({**cfg, "WARMUP_ENABLED": False})
    async with app.test_app():
        warmer = get_warmup(app).warmer
        for q in queries:
            warmer.note(q)
        await warmer.record()


def days(symbol: str, n: int, provider: str = "sim", market: str = "sim") -> list[BarQuery]:
    return [BarQuery(Series(market, provider, symbol), "1h", OLD + i * 86_400_000, None, 24)
            for i in range(n)]


async def test_the_call_budget_stops_it(app_config: dict[str, Any]) -> None:
    cfg = {**app_config, "WARMUP_MAX_CALLS": 4}
    await seed(cfg, days("SIM/USD", 6))  # nothing stored: a day of 1m bars is 2 sim calls
    app = create_app(cfg)
    async with app.test_app():
        report = await asyncio.wait_for(get_warmup(app).warming, 20)  # type: ignore[arg-type]
        assert report.stopped == "calls" and report.queries == 2 and report.calls == 4


@pytest.fixture
def slow_config(app_config: dict[str, Any], emulator: ExchangeEmulator) -> dict[str, Any]:
    emulator.latency = 3.0  # every exchange request takes 3 s
    return {**app_config, "PROVIDER_URLS": {"binance": emulator.url}, "ENABLED_MARKETS": "sim,crypto",
            "CCXT_EXCHANGES": "binance", "PROVIDER_TIMEOUT": 10.0, "SHUTDOWN_TIMEOUT": 2.0}


async def test_the_time_budget_stops_it(slow_config: dict[str, Any]) -> None:
    cfg = {**slow_config, "WARMUP_MAX_SECONDS": 0.5}
    await seed(cfg, days("BTC/USDT", 3, "binance", "crypto"))
    app = create_app(cfg)
    async with app.test_app():
        report = await asyncio.wait_for(get_warmup(app).warming, 10)  # type: ignore[arg-type]
        assert report.stopped == "time" and report.queries == 0 and report.seconds < 1.5


async def test_shutdown_stops_warming_at_once(slow_config: dict[str, Any], emulator: ExchangeEmulator) -> None:
    await seed(slow_config, days("BTC/USDT", 3, "binance", "crypto"))
    app = create_app(slow_config)
    async with app.test_app():
        await wait_for(lambda: emulator.calls() >= 1)  # warming waits on the slow exchange
        warming = get_warmup(app).warming
        assert warming is not None and not warming.done()
        started = time.perf_counter()
    assert time.perf_counter() - started < 2.0
    assert warming.cancelled() or warming.result().stopped == "cancelled"


def test_bad_settings_stop_the_start(app_config: dict[str, Any]) -> None:
    from config import ConfigError

    with pytest.raises(ConfigError, match="WARMUP_MAX_SECONDS"):
        create_app({**app_config, "WARMUP_MAX_SECONDS": 0})
