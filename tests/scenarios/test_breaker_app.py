"""The circuit breaker in the app: a failing exchange is cut off; while open, requests answer at
once from what is stored, else 503 with Retry-After, and /health/ready shows the state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from quart import Quart

from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import NO_LEAKS
from tests.support.helpers import readiness, serving

pytestmark = NO_LEAKS
emulator = fixtures.emulator
KLINES = "/api/v3/klines"
BASE = "/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT&timeframe=1m"
LATEST = BASE + "&limit=30"
OLD = BASE + "&start=2024-01-02T00:00:00Z&limit=30"  # nothing stored there


@pytest.fixture
async def app(app_config: dict[str, Any], emulator: ExchangeEmulator) -> AsyncIterator[Quart]:
    cfg = {**app_config, "PROVIDER_URLS": {"binance": emulator.url}, "ENABLED_MARKETS": "sim,crypto",
           "CCXT_EXCHANGES": "binance", "RATE_LIMIT_ENABLED": False, "PROVIDER_TIMEOUT": 0.5,
           "PROVIDER_RETRIES": 0, "BREAKER_FAILURE_THRESHOLD": 2, "BREAKER_OPEN_SECONDS": 1.0,
           "READINESS_CACHE_SECONDS": 0.0}  # each look at /health/ready sees the state of now
    async with serving(cfg) as application:
        yield application


async def states(app: Quart) -> dict[str, Any]:
    body = await readiness(app)
    assert body["status"] == "ok"  # an open breaker is not the instance's failure
    providers: dict[str, Any] = body["checks"]["providers"]
    return providers


async def test_open_breaker_answers_at_once_then_a_probe_closes_it(
    app: Quart, emulator: ExchangeEmulator
) -> None:
    client = app.test_client()
    assert await states(app) == {"binance": {"state": "closed"}, "sim": {"state": "closed"}}
    assert (await client.get(LATEST)).status_code == 200  # stores the latest bars
    emulator.inject(KLINES, status=503, times=None)
    for _ in range(2):  # BREAKER_FAILURE_THRESHOLD failed calls open it
        assert (await client.get(OLD)).status_code == 503
    assert (await states(app))["binance"] == {"state": "open"}
    assert REGISTRY.get_sample_value("provider_breaker_state", {"provider": "binance"}) == 2
    calls = emulator.calls(KLINES)
    started = time.perf_counter()
    r = await client.get(OLD)  # nothing stored: 503 at once, no call made
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert (await r.get_json())["error"]["code"] == "provider_unavailable"
    r = await client.get(LATEST + "&end=" + str(int(time.time() * 1000) - 1))  # stored: answered
    assert r.status_code == 200 and (await r.get_json())["bars"]
    assert time.perf_counter() - started < 0.5 and emulator.calls(KLINES) == calls
    await asyncio.sleep(1.1)
    assert (await states(app))["binance"] == {"state": "half_open"}
    emulator.clear_faults()
    assert (await client.get(OLD)).status_code == 200  # the probe succeeds
    assert (await states(app))["binance"] == {"state": "closed"}
    assert emulator.calls(KLINES) > calls
