"""Stale while error: /ticker answers the last known ticker, flagged, when the provider fails."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from app import create_app
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import NO_LEAKS

pytestmark = NO_LEAKS
emulator = fixtures.emulator
TICKER = "/api/v1/ticker?market=stocks&provider=alpaca&symbol="


@pytest.fixture
def app_config(app_config: dict[str, Any], emulator: ExchangeEmulator) -> dict[str, Any]:
    return {**app_config, "PROVIDER_URLS": {"alpaca": emulator.url}, "ENABLED_MARKETS": "sim,stocks",
            "ALPACA_API_KEY_ID": "key", "ALPACA_API_SECRET_KEY": "secret",
            "RATE_LIMIT_ENABLED": False, "PROVIDER_TIMEOUT": 0.5, "PROVIDER_RETRIES": 1,
            "PROVIDER_RETRY_MAX_WAIT": 0.05}


async def test_last_known_ticker_while_the_provider_fails(
    app_config: dict[str, Any], emulator: ExchangeEmulator
) -> None:
    app = create_app(app_config)
    async with app.test_app():
        client = app.test_client()
        fresh = await client.get(TICKER + "AAPL")
        assert fresh.status_code == 200 and "X-Data-Stale" not in fresh.headers
        body = await fresh.get_json()
        assert body["stale"] is False
        before = REGISTRY.get_sample_value("stale_answers_total",
                                           {"provider": "alpaca", "endpoint": "ticker"}) or 0.0
        emulator.inject("/v2/stocks/*/snapshot", status=503, times=None)
        stale = await client.get(TICKER + "AAPL")
        assert stale.status_code == 200 and stale.headers["X-Data-Stale"] == "true"
        assert await stale.get_json() == {**body, "stale": True}
        assert REGISTRY.get_sample_value("stale_answers_total",
                                         {"provider": "alpaca", "endpoint": "ticker"}) == before + 1
        never_seen = await client.get(TICKER + "MSFT")  # nothing known: the error stands
        assert never_seen.status_code == 503
        assert (await never_seen.get_json())["error"]["code"] == "provider_unavailable"
    other = create_app(app_config)  # another instance: the last ticker is kept in Redis
    async with other.test_app():
        r = await other.test_client().get(TICKER + "AAPL")
        assert r.status_code == 200 and (await r.get_json())["stale"] is True
        emulator.clear_faults()
        r = await other.test_client().get(TICKER + "AAPL")
        assert r.status_code == 200 and "X-Data-Stale" not in r.headers
        assert (await r.get_json())["stale"] is False


async def test_an_exchange_error_is_not_hidden(app_config: dict[str, Any], emulator: ExchangeEmulator) -> None:
    app = create_app(app_config)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get(TICKER + "AAPL")).status_code == 200
        emulator.inject("/v2/stocks/*/snapshot", status=403, times=None)  # refused: not an outage
        r = await client.get(TICKER + "AAPL")
        assert r.status_code == 502 and (await r.get_json())["error"]["code"] == "provider_error"


async def test_a_slow_exchange_gets_the_last_ticker_within_the_deadline(
    app_config: dict[str, Any], emulator: ExchangeEmulator
) -> None:
    import time

    app = create_app({**app_config, "REQUEST_DEADLINE": 1.0, "PROVIDER_TIMEOUT": 30.0})
    async with app.test_app():
        client = app.test_client()
        fresh = await (await client.get(TICKER + "AAPL")).get_json()
        emulator.inject("/v2/stocks/*/snapshot", delay=30.0, times=None)  # 30 s to answer
        started = time.perf_counter()
        r = await client.get(TICKER + "AAPL")
        took = time.perf_counter() - started
        assert r.status_code == 200 and r.headers["X-Data-Stale"] == "true"
        assert await r.get_json() == {**fresh, "stale": True}
        assert took < 2.0, took
        emulator.clear_faults()
