"""AlpacaPlugin against the emulator's Alpaca data v2 subset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from core.errors import (
    AppError,
    AuthenticationPluginError,
    NetworkPluginError,
    PluginError,
    PluginFeatureNotSupportedError,
    UnknownSymbol,
)
from core.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS, resample
from plugins.alpaca import AlpacaPlugin, parse_ts, rfc3339
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.candles import in_session
from tests.support.exchange_emulator.checks import NO_LEAKS, assert_same_bars
from tests.support.plugin_kit import EMULATOR, TEMPORARY_FAULTS, plugin_settings, retries, slow_down

pytestmark = NO_LEAKS
emulator = fixtures.emulator
T0 = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC
BARS = "/v2/stocks/AAPL/bars"
ALPACA_TF = {"1m": "1Min", "5m": "5Min", "1h": "1Hour", "1d": "1Day", "1w": "1Week"}


@pytest_asyncio.fixture
async def plugin(emulator: ExchangeEmulator) -> AsyncIterator[AlpacaPlugin]:
    creds, testnet = AlpacaPlugin.settings_from_config("alpaca", plugin_settings(EMULATOR))
    p = AlpacaPlugin("alpaca", credentials=creds, testnet=testnet, base_url=emulator.url,
                     settings=plugin_settings(EMULATOR))
    try:
        yield p
    finally:
        await p.close()


async def emulator_bars(emu: ExchangeEmulator, tf: str, start: int, end: int) -> list[list[float]]:
    """The emulator's own bars of [start, end), read with page tokens, without the plugin."""
    out: list[list[float]] = []
    params = {"timeframe": ALPACA_TF[tf], "start": rfc3339(start), "end": rfc3339(end - 1),
              "limit": "10000"}
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(emu.url + BARS, params=params) as resp:
                body = await resp.json()
            out += [[parse_ts(b["t"]), b["o"], b["h"], b["l"], b["c"], b["v"]]
                    for b in body["bars"] or []]
            if not body["next_page_token"]:
                return out
            params["page_token"] = body["next_page_token"]


async def page_through(p: AlpacaPlugin, tf: str, start: int, end: int, limit: int) -> list[Any]:
    out: list[Any] = []
    since = start
    while since < end:
        page = await p.fetch_ohlcv("AAPL", tf, since, limit, end)
        out += page
        if len(page) < limit:
            break
        since = int(page[-1][0]) + 1
    return out


@pytest.mark.parametrize("tf,span,limit", [
    ("5m", 5 * DAY_MS, 100), ("1h", 15 * DAY_MS, 20), ("1d", 40 * DAY_MS, 8),
    ("1w", 12 * WEEK_MS, 4),
])
async def test_bars_equal_emulator_bars_across_pages(
    plugin: AlpacaPlugin, emulator: ExchangeEmulator, tf: str, span: int, limit: int
) -> None:
    got = await page_through(plugin, tf, T0, T0 + span, limit)
    want = await emulator_bars(emulator, tf, T0, T0 + span)
    assert len(want) > 2 * limit
    assert got == want


async def test_only_trading_hours_and_resampling_matches(
    plugin: AlpacaPlugin, emulator: ExchangeEmulator
) -> None:
    week = await plugin.fetch_ohlcv("AAPL", "1m", T0, 10_000, T0 + WEEK_MS)
    assert len(week) == 5 * 390 and all(in_session(int(b[0])) for b in week)
    weekend = await plugin.fetch_ohlcv("AAPL", "1m", T0 + 5 * DAY_MS, 100, T0 + 7 * DAY_MS)
    assert weekend == []  # no bars are invented for nights and weekends
    hours = await plugin.fetch_ohlcv("AAPL", "1h", T0, 1000, T0 + WEEK_MS)
    assert_same_bars(resample(week, "1h"), hours)
    days = await plugin.fetch_ohlcv("AAPL", "1d", T0, 1000, T0 + WEEK_MS)
    assert_same_bars(resample(week, "1d"), days)


async def test_page_tokens_are_followed_within_one_fetch(
    plugin: AlpacaPlugin, emulator: ExchangeEmulator
) -> None:
    emulator.alpaca.page_size = 300
    bars = await plugin.fetch_ohlcv("AAPL", "1m", T0, 1000, T0 + WEEK_MS)
    assert len(bars) == 1000 and emulator.calls(BARS) == 4
    assert [b[0] for b in bars] == sorted({b[0] for b in bars})
    tokens = [r.query.get("page_token") for r in emulator.requests(BARS)]
    assert tokens[0] is None and all(tokens[1:])
    assert emulator.requests(BARS)[0].query["feed"] == "iex"
    assert emulator.requests(BARS)[0].query["adjustment"] == "raw"


async def test_until_is_exclusive(plugin: AlpacaPlugin) -> None:
    start = T0 + 14 * HOUR_MS + 30 * MINUTE_MS
    bars = await plugin.fetch_ohlcv("AAPL", "1m", start, 100, start + 10 * MINUTE_MS)
    assert [b[0] for b in bars] == [start + i * MINUTE_MS for i in range(10)]


@pytest.mark.parametrize("fault,error", [*TEMPORARY_FAULTS, ({"drop": True}, NetworkPluginError)])
async def test_temporary_faults_are_retried_then_raised(
    plugin: AlpacaPlugin, emulator: ExchangeEmulator, fault: dict[str, Any], error: type[AppError]
) -> None:
    slow_down(plugin, fault)
    await plugin.fetch_symbols()
    emulator.inject("/v2/stocks/*/bars", times=None, **fault)
    before = retries("alpaca")
    with pytest.raises(error) as info:
        await plugin.fetch_ohlcv("AAPL", "1h", T0, 10, T0 + DAY_MS)
    assert info.value.temporary and info.value.status == 503
    after = retries("alpaca")
    assert after == before + 2
    # aiohttp itself re-sends an idempotent request once after a dropped connection.
    assert emulator.calls(BARS) == (6 if fault.get("drop") else 3)


@pytest.mark.parametrize("status,error", [
    (401, AuthenticationPluginError), (403, AuthenticationPluginError), (400, PluginError)])
async def test_permanent_errors_are_not_retried(
    plugin: AlpacaPlugin, emulator: ExchangeEmulator, status: int, error: type[AppError]
) -> None:
    await plugin.fetch_symbols()
    emulator.inject(BARS, status=status, times=None)
    with pytest.raises(error) as info:
        await plugin.fetch_ohlcv("AAPL", "1h", T0, 10)
    assert not info.value.temporary and emulator.calls(BARS) == 1


async def test_unknown_symbol_and_timeframe(plugin: AlpacaPlugin, emulator: ExchangeEmulator) -> None:
    with pytest.raises(UnknownSymbol):
        await plugin.fetch_ohlcv("ZZZZ", "1m", T0, 10)
    with pytest.raises(UnknownSymbol):
        await plugin.fetch_ticker("ZZZZ")
    with pytest.raises(PluginFeatureNotSupportedError):
        await plugin.fetch_ohlcv("AAPL", "4h", T0, 10)
    assert emulator.calls("/v2/stocks/*") == 0
    assert emulator.calls("/v2/assets") == 1  # assets are loaded once and cached


async def test_symbols_ticker_headers(plugin: AlpacaPlugin, emulator: ExchangeEmulator) -> None:
    assert await plugin.fetch_symbols() == ["AAPL", "MSFT", "NVDA", "SPY", "TSLA"]
    emulator.now_ms = T0 + 15 * HOUR_MS
    ticker = await plugin.fetch_ticker("AAPL")
    assert ticker.ts == T0 + 15 * HOUR_MS + 59_000
    assert ticker.bid is not None and ticker.ask is not None and ticker.bid < ticker.last < ticker.ask


async def test_close_is_idempotent_and_reopens(plugin: AlpacaPlugin) -> None:
    assert await plugin.fetch_ohlcv("AAPL", "1d", T0, 3)
    await plugin.close()
    await plugin.close()
    assert len(await plugin.fetch_ohlcv("AAPL", "1d", T0, 3)) == 3


def test_configuration_and_time_helpers() -> None:
    (info,) = AlpacaPlugin.list_configurable_providers(plugin_settings(EMULATOR))
    assert (info.provider, info.requires_credentials, info.configured) == ("alpaca", True, True)
    (bare,) = AlpacaPlugin.list_configurable_providers(plugin_settings(EMULATOR, ALPACA_API_KEY_ID=""))
    assert not bare.configured
    assert AlpacaPlugin.settings_from_config("alpaca", plugin_settings(EMULATOR)) == (
        {"key_id": "key", "secret_key": "secret"}, False)
    assert parse_ts("2024-01-01T14:30:00.123456789Z") == T0 + 14 * HOUR_MS + 30 * MINUTE_MS + 123
    assert parse_ts("2024-01-01T09:30:00-05:00") == T0 + 14 * HOUR_MS + 30 * MINUTE_MS
    assert rfc3339(T0 + 999) == "2024-01-01T00:00:00Z"
