"""One upstream poll per interval however many clients watch a channel, on one instance or two
sharing Redis: polls counted in the exchange emulator's request log (real CCXT binance path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from quart import Quart

from app import create_app
from app_extensions.services import get_services
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.helpers import clear_shared_markets
from tests.support.ws import (
    WS_TEST_CONFIG,
    Client,
    assert_ts_monotonic,
    http_session,
    serve_app,
    wait_for,
)

emulator = fixtures.emulator
KLINES = "/api/v3/klines"
INTERVAL = 0.25
WINDOW = 2.0
SUB = {"op": "subscribe", "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
       "timeframe": "1m", "history": 5}


@pytest.fixture
def crypto_config(app_config: dict[str, Any], emulator: ExchangeEmulator) -> dict[str, Any]:
    clear_shared_markets()
    return {**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "crypto",
            "PROVIDER_URLS": {"binance": emulator.url}, "POLL_INTERVAL_DEFAULT": INTERVAL,
            "POLL_PROVIDER_MIN_INTERVALS": {"binance": INTERVAL},
            "PROVIDER_TIMEOUT": 1.0, "PROVIDER_RETRIES": 1, "PROVIDER_RETRY_MAX_WAIT": 0.05}


@contextlib.asynccontextmanager
async def clients(session: aiohttp.ClientSession, addr: str, n: int) -> AsyncIterator[list[Client]]:
    opened = await asyncio.gather(*[Client(session, f"http://{addr}/api/v1/ws").open() for _ in range(n)])
    try:
        await asyncio.gather(*[c.send({**SUB, "id": i}) for i, c in enumerate(opened)])
        await wait_for(lambda: all(c.of("snapshot") for c in opened), within=30)
        yield list(opened)
    finally:
        await asyncio.gather(*[c.close() for c in opened])


async def polls_in_window(emu: ExchangeEmulator) -> int:
    start = emu.calls(KLINES)
    await asyncio.sleep(WINDOW)  # a measured window: the assertion is on the rate within it
    return emu.calls(KLINES) - start


def check_rate(polls: int) -> None:
    # one poll per interval, plus at most one early poll at a minute boundary (final bar fetch)
    expected = WINDOW / INTERVAL
    print(f"upstream polls in {WINDOW}s at {INTERVAL}s: {polls}")
    assert expected * 0.5 <= polls <= expected + 2, polls


async def test_200_clients_on_one_instance_cost_one_poll_per_interval(
    crypto_config: dict[str, Any], emulator: ExchangeEmulator
) -> None:
    app = create_app(crypto_config)
    async with serve_app(app) as addr, http_session() as session, clients(session, addr, 200) as cs:
        assert get_services(app).subscriptions.status()["polling"] == 1
        check_rate(await polls_in_window(emulator))
        for c in cs:
            assert c.of("subscribed")[0]["channel"] == "crypto:binance:BTC/USDT:1m"
            assert_ts_monotonic(c.frames)


async def test_two_instances_sharing_redis_poll_once_per_interval(
    crypto_config: dict[str, Any], emulator: ExchangeEmulator
) -> None:
    apps: list[Quart] = [create_app(crypto_config), create_app(crypto_config)]
    async with (serve_app(apps[0]) as a, serve_app(apps[1]) as b, http_session() as session,
                clients(session, a, 100), clients(session, b, 100) as cs_b):
        statuses = [get_services(app).subscriptions.status() for app in apps]
        assert [s["mode"] for s in statuses] == ["redis", "redis"]
        assert sorted(s["polling"] for s in statuses) == [0, 1]
        check_rate(await polls_in_window(emulator))
        for c in cs_b:
            assert_ts_monotonic(c.frames)
