"""The real exchanges through the app: /api/v1 with PROVIDER_URLS pointing at the emulator.

Runs the whole path (blueprint, orchestrator, storage, cache, MarketService, the CCXT and Alpaca
plugins) against real PostgreSQL and Redis, with the exchanges emulated over HTTP.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from quart.typing import TestClientProtocol

from core.timeframes import DAY_MS, MINUTE_MS, WEEK_MS, resample, tf_ms
from plugins.alpaca import parse_ts, rfc3339
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import NO_LEAKS, assert_same_bars, fetch_klines
from tests.support.helpers import clear_shared_markets

pytestmark = NO_LEAKS
emulator = fixtures.emulator
T0 = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC
KLINES = "/api/v3/klines"
CRYPTO = "/api/v1/ohlcv?market=crypto&provider=binance&symbol=BTC/USDT"
STOCKS = "/api/v1/ohlcv?market=stocks&provider=alpaca&symbol=AAPL"


@pytest.fixture
def app_config(app_config: dict[str, Any], emulator: ExchangeEmulator) -> dict[str, Any]:
    clear_shared_markets()
    return {**app_config,
            "PROVIDER_URLS": {"binance": emulator.url, "alpaca": emulator.url},
            "ALPACA_API_KEY_ID": "key", "ALPACA_API_SECRET_KEY": "secret",
            "PROVIDER_TIMEOUT": 0.5, "PROVIDER_RETRIES": 2, "PROVIDER_RETRY_MAX_WAIT": 0.05}


async def get(client: TestClientProtocol, url: str) -> tuple[int, Any]:
    r = await client.get(url)
    return r.status_code, await r.get_json()


@pytest.mark.parametrize("tf,count", [
    ("5m", 2500), ("1h", 1500), ("4h", 1100), ("1d", 400), ("1w", 100)])
async def test_crypto_bars_equal_emulator_klines(
    client: TestClientProtocol, emulator: ExchangeEmulator, tf: str, count: int
) -> None:
    end = T0 + count * tf_ms(tf)
    # Read the emulator's klines first: it computes long ranges on the shared event loop once,
    # so the app's calls below are not slowed beyond PROVIDER_TIMEOUT by the emulator itself.
    want = await fetch_klines(emulator.url, tf, T0, end)
    assert len(want) == count
    before = emulator.calls(KLINES)
    status, body = await get(client, f"{CRYPTO}&timeframe={tf}&start={T0}&end={end}&limit=5000")
    assert status == 200, body
    assert_same_bars(body["bars"], want)
    assert emulator.calls(KLINES) > before and body["partial"] is False


async def test_cold_5000_minutes_make_exactly_five_klines_calls(
    client: TestClientProtocol, emulator: ExchangeEmulator
) -> None:
    end = T0 + 5000 * MINUTE_MS
    status, body = await get(client, f"{CRYPTO}&timeframe=1m&start={T0}&end={end}&limit=5000")
    assert status == 200, body
    assert len(body["bars"]) == 5000 and emulator.calls(KLINES) == 5
    status, again = await get(client, f"{CRYPTO}&timeframe=1m&start={T0}&end={end}&limit=5000")
    assert status == 200 and again["bars"] == body["bars"]
    assert emulator.calls(KLINES) == 5  # the repeat is served without the exchange


@pytest.mark.parametrize("fault,status,code", [
    ({"status": 429, "retry_after": 1}, 503, "provider_unavailable"),
    ({"status": 418, "retry_after": 1}, 503, "provider_unavailable"),
    ({"status": 500}, 503, "provider_unavailable"),
    ({"status": 502}, 503, "provider_unavailable"),
    ({"status": 503}, 503, "provider_unavailable"),
    ({"status": 504}, 503, "provider_unavailable"),
    ({"delay": 2.0}, 503, "provider_unavailable"),
    ({"drop": True}, 503, "provider_unavailable"),
    ({"malformed": "json"}, 503, "provider_unavailable"),
    ({"malformed": "invalid"}, 503, "provider_unavailable"),
    ({"malformed": "html"}, 503, "provider_unavailable"),
    ({"status": 401}, 502, "provider_error"),
    ({"status": 400}, 502, "provider_error"),
])
async def test_crypto_faults_answer_documented_errors(
    client: TestClientProtocol, emulator: ExchangeEmulator, fault: dict[str, Any], status: int,
    code: str,
) -> None:
    emulator.inject(KLINES, times=None, **fault)
    end = T0 + 100 * MINUTE_MS
    got, body = await get(client, f"{CRYPTO}&timeframe=1m&start={T0}&end={end}")
    assert (got, body["error"]["code"]) == (status, code), body
    assert emulator.calls(KLINES) >= 1


async def test_stored_bars_are_served_during_an_outage(
    client: TestClientProtocol, emulator: ExchangeEmulator
) -> None:
    url = f"{CRYPTO}&timeframe=1h&start={T0}&end={T0 + DAY_MS}"
    status, body = await get(client, url)
    assert status == 200 and len(body["bars"]) == 24
    emulator.inject(KLINES, status=503, times=None)
    status, again = await get(client, url)
    assert status == 200 and again["bars"] == body["bars"]


async def test_crypto_unknown_symbol_symbols_ticker_providers(
    client: TestClientProtocol, emulator: ExchangeEmulator
) -> None:
    status, body = await get(client, CRYPTO.replace("BTC/USDT", "NOPE/USDT") + f"&start={T0}")
    assert (status, body["error"]["code"]) == (404, "unknown_symbol")
    status, body = await get(client, "/api/v1/symbols?market=crypto&provider=binance")
    assert status == 200 and "BTC/USDT" in body["symbols"]
    status, body = await get(client, "/api/v1/ticker?market=crypto&provider=binance&symbol=BTC/USDT")
    assert status == 200 and body["bid"] < body["last"] < body["ask"]
    status, body = await get(client, "/api/v1/providers?market=stocks")
    assert body["providers"][0]["provider"] == "alpaca" and body["providers"][0]["configured"]


@pytest.mark.parametrize("tf", ["1m", "5m", "1h", "4h", "1d", "1w"])
async def test_stock_bars_equal_emulator_bars(
    client: TestClientProtocol, emulator: ExchangeEmulator, tf: str
) -> None:
    end = T0 + 2 * WEEK_MS
    bars: list[list[float]] = []
    start: int | None = T0
    while start is not None:  # follow ``next`` like a client
        status, body = await get(client, f"{STOCKS}&timeframe={tf}&start={start}&end={end}&limit=5000")
        assert status == 200, body
        bars += body["bars"]
        start = body["next"]
    async with aiohttp.ClientSession() as http:
        params = {"timeframe": "1Min", "start": rfc3339(T0), "end": rfc3339(end - 1),
                  "limit": "10000"}
        async with http.get(emulator.url + "/v2/stocks/AAPL/bars", params=params) as resp:
            raw = (await resp.json())["bars"]
    minutes = [[parse_ts(b["t"]), b["o"], b["h"], b["l"], b["c"], b["v"]] for b in raw]
    assert len(minutes) == 10 * 390  # ten sessions, nothing at nights or weekends
    assert_same_bars(bars, resample(minutes, tf))


async def test_stock_unknown_symbol(client: TestClientProtocol) -> None:
    status, body = await get(client, STOCKS.replace("AAPL", "ZZZZ") + f"&start={T0}")
    assert (status, body["error"]["code"]) == (404, "unknown_symbol")


@pytest.mark.parametrize("fault,status,code", [
    ({"status": 429, "retry_after": 1}, 503, "provider_unavailable"),
    ({"status": 500}, 503, "provider_unavailable"),
    ({"status": 503}, 503, "provider_unavailable"),
    ({"delay": 2.0}, 503, "provider_unavailable"),
    ({"drop": True}, 503, "provider_unavailable"),
    ({"malformed": "json"}, 503, "provider_unavailable"),
    ({"malformed": "invalid"}, 503, "provider_unavailable"),
    ({"status": 403}, 502, "provider_error"),
    ({"status": 422}, 502, "provider_error"),
])
async def test_stock_faults_answer_documented_errors(
    client: TestClientProtocol, emulator: ExchangeEmulator, fault: dict[str, Any], status: int,
    code: str,
) -> None:
    emulator.inject("/v2/stocks/*/bars", times=None, **fault)
    got, body = await get(client, f"{STOCKS}&timeframe=1h&start={T0}&end={T0 + DAY_MS}")
    assert (got, body["error"]["code"]) == (status, code), body
