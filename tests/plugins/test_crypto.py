"""CryptoPlugin against the emulator: the real CCXT ``binance`` code path over HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from core.errors import (
    AppError,
    AuthenticationPluginError,
    NetworkPluginError,
    PluginError,
    PluginFeatureNotSupportedError,
    RateLimitedPluginError,
    UnknownProvider,
    UnknownSymbol,
)
from core.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS, resample, tf_ms
from plugins.crypto import CryptoPlugin
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import NO_LEAKS, assert_same_bars, fetch_klines
from tests.support.helpers import clear_shared_markets
from tests.support.plugin_kit import EMULATOR, TEMPORARY_FAULTS, plugin_settings, retries, slow_down

pytestmark = NO_LEAKS
emulator = fixtures.emulator
T0 = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC
KLINES = "/api/v3/klines"


@pytest_asyncio.fixture
async def plugin(emulator: ExchangeEmulator) -> AsyncIterator[CryptoPlugin]:
    clear_shared_markets()  # a later emulator may reuse a port
    p = CryptoPlugin("binance", base_url=emulator.url, settings=plugin_settings(EMULATOR))
    try:
        yield p
    finally:
        await p.close()


async def page_through(p: CryptoPlugin, tf: str, start: int, end: int, limit: int) -> list[Any]:
    """Page like the orchestrator does: from the last bar on, until a short page."""
    out: list[Any] = []
    since = start
    while since < end:
        page = await p.fetch_ohlcv("BTC/USDT", tf, since, limit, end)
        out += page
        if len(page) < limit:
            break
        since = int(page[-1][0]) + tf_ms(tf)
    return out


@pytest.mark.parametrize("tf,span,limit", [
    ("5m", 2 * DAY_MS, 100), ("1h", 10 * DAY_MS, 50), ("4h", 20 * DAY_MS, 30),
    ("1d", 60 * DAY_MS, 25), ("1w", 16 * WEEK_MS, 5),
])
async def test_bars_equal_emulator_klines_across_pages(
    plugin: CryptoPlugin, emulator: ExchangeEmulator, tf: str, span: int, limit: int
) -> None:
    start, end = T0 + 3 * HOUR_MS if tf != "1w" else T0, T0 + span
    got = await page_through(plugin, tf, start, end, limit)
    assert emulator.calls(KLINES) == len(got) // limit + 1  # one upstream call per page
    want = await fetch_klines(emulator.url, tf, start, end)
    assert len(want) > 2 * limit  # the range crosses page boundaries
    assert got == want


@pytest.mark.parametrize("tf", ["5m", "1h"])
async def test_our_resampling_matches_emulator(
    plugin: CryptoPlugin, emulator: ExchangeEmulator, tf: str
) -> None:
    minutes = await page_through(plugin, "1m", T0, T0 + DAY_MS, 1000)
    native = await page_through(plugin, tf, T0, T0 + DAY_MS, 1000)
    assert len(minutes) == 1440
    assert_same_bars(resample(minutes, tf), native)


async def test_cold_5000_minutes_take_five_calls(
    plugin: CryptoPlugin, emulator: ExchangeEmulator
) -> None:
    bars = await page_through(plugin, "1m", T0, T0 + 5000 * MINUTE_MS, 1000)
    assert len(bars) == 5000 and emulator.calls(KLINES) == 5
    assert emulator.calls("/api/v3/exchangeInfo") == 1
    assert [r.query["limit"] for r in emulator.requests(KLINES)] == ["1000"] * 5
    assert bars[-1][0] == T0 + 4999 * MINUTE_MS


async def test_limit_is_capped_by_capabilities(plugin: CryptoPlugin, emulator: ExchangeEmulator) -> None:
    bars = await plugin.fetch_ohlcv("BTC/USDT", "1m", T0, 5000)
    assert len(bars) == 1000 and emulator.calls(KLINES) == 1


async def test_maintenance_gap_is_skipped_and_empty_window_is_not_an_error(
    plugin: CryptoPlugin, emulator: ExchangeEmulator
) -> None:
    emulator.add_maintenance(T0 + HOUR_MS, T0 + 3 * HOUR_MS)
    bars = await plugin.fetch_ohlcv("BTC/USDT", "1m", T0, 1000, T0 + 4 * HOUR_MS)
    ts = [b[0] for b in bars]
    assert len(bars) == 120 and T0 + HOUR_MS not in ts and ts[60] == T0 + 3 * HOUR_MS
    assert await plugin.fetch_ohlcv("BTC/USDT", "1m", T0 + HOUR_MS, 100, T0 + 2 * HOUR_MS) == []


@pytest.mark.parametrize("fault,error", [
    *TEMPORARY_FAULTS, ({"status": 418, "retry_after": 1}, RateLimitedPluginError)])  # Binance's ban
async def test_temporary_faults_are_retried_then_raised(
    plugin: CryptoPlugin, emulator: ExchangeEmulator, fault: dict[str, Any], error: type[AppError]
) -> None:
    slow_down(plugin, fault)
    await plugin.fetch_symbols()
    emulator.inject(KLINES, times=None, **fault)
    before = retries("binance")
    with pytest.raises(error) as info:
        await plugin.fetch_ohlcv("BTC/USDT", "1h", T0, 10, T0 + DAY_MS)
    assert info.value.temporary and info.value.status == 503
    assert emulator.calls(KLINES) == 3  # PROVIDER_RETRIES=2: first attempt + 2 retries
    assert retries("binance") - before == 2
    if "retry_after" in fault:
        assert info.value.retry_after == 1.0


async def test_dropped_connection_is_a_network_error(
    plugin: CryptoPlugin, emulator: ExchangeEmulator
) -> None:
    await plugin.fetch_symbols()
    emulator.inject(KLINES, drop=True, times=None)
    with pytest.raises(NetworkPluginError):
        await plugin.fetch_ohlcv("BTC/USDT", "1h", T0, 10, T0 + DAY_MS)
    assert emulator.calls(KLINES) >= 3


@pytest.mark.parametrize("status,error", [(400, PluginError), (401, AuthenticationPluginError)])
async def test_permanent_errors_are_not_retried(
    plugin: CryptoPlugin, emulator: ExchangeEmulator, status: int, error: type[AppError]
) -> None:
    await plugin.fetch_symbols()
    emulator.inject(KLINES, status=status, times=None)
    before = retries("binance")
    with pytest.raises(error) as info:
        await plugin.fetch_ohlcv("BTC/USDT", "1h", T0, 10)
    assert not info.value.temporary and info.value.status != 500
    assert emulator.calls(KLINES) == 1 and retries("binance") == before


async def test_a_429_then_success_waits_for_retry_after(
    plugin: CryptoPlugin, emulator: ExchangeEmulator
) -> None:
    await plugin.fetch_symbols()
    emulator.inject(KLINES, status=429, times=1, retry_after=1)
    started = time.monotonic()
    bars = await plugin.fetch_ohlcv("BTC/USDT", "1h", T0, 10)
    assert len(bars) == 10 and emulator.calls(KLINES) == 2
    assert time.monotonic() - started >= 0.05  # retry_after 1 s, capped by RETRY_MAX_WAIT


async def test_unknown_symbol_and_unsupported_timeframe_make_no_klines_call(
    plugin: CryptoPlugin, emulator: ExchangeEmulator
) -> None:
    with pytest.raises(UnknownSymbol):
        await plugin.fetch_ohlcv("DOGE/EUR", "1m", T0, 10)
    kraken = CryptoPlugin("kraken", base_url=emulator.url, settings=plugin_settings(EMULATOR))
    with pytest.raises(PluginFeatureNotSupportedError):
        await kraken.fetch_ohlcv("BTC/USD", "3m", T0, 10)
    await kraken.close()
    with pytest.raises(UnknownProvider):
        await CryptoPlugin("not_an_exchange", settings=plugin_settings(EMULATOR)).fetch_symbols()
    assert emulator.calls(KLINES) == 0


async def test_symbols_ticker_and_shared_markets(emulator: ExchangeEmulator) -> None:
    clear_shared_markets()
    base = {"base_url": emulator.url, "settings": plugin_settings(EMULATOR)}
    a, b = CryptoPlugin("binance", **base), CryptoPlugin("binance", **base)
    try:
        assert await a.fetch_symbols() == ["BNB/USDT", "BTC/USDT", "ETH/BTC", "ETH/USDT", "SOL/USDT"]
        assert await b.fetch_symbols() == await a.fetch_symbols()
        assert emulator.calls("/api/v3/exchangeInfo") == 1  # markets loaded once, shared
        assert emulator.calls("/fapi/v1/exchangeInfo") == 0  # only spot markets are loaded
        ticker = await a.fetch_ticker("BTC/USDT")
        assert ticker.bid is not None and ticker.ask is not None
        assert ticker.bid < ticker.last < ticker.ask
    finally:
        await a.close()
        await b.close()


async def test_credentials_do_not_trigger_private_calls(emulator: ExchangeEmulator) -> None:
    clear_shared_markets()
    p = CryptoPlugin("binance", credentials={"apiKey": "k", "secret": "s"}, base_url=emulator.url,
                     settings=plugin_settings(EMULATOR))
    try:
        assert len(await p.fetch_ohlcv("BTC/USDT", "1m", T0, 3)) == 3
        assert {r.path for r in emulator.requests()} == {"/api/v3/exchangeInfo", KLINES}
    finally:
        await p.close()


async def test_close_is_idempotent_and_reopens(plugin: CryptoPlugin, emulator: ExchangeEmulator) -> None:
    await plugin.fetch_ohlcv("BTC/USDT", "1m", T0, 5)
    await plugin.close()
    await plugin.close()
    assert len(await plugin.fetch_ohlcv("BTC/USDT", "1m", T0, 5)) == 5


async def test_testnet_and_base_url_rewrite_every_api_family(emulator: ExchangeEmulator) -> None:
    p = CryptoPlugin("binance", testnet=True, base_url=emulator.url, settings=plugin_settings(EMULATOR))
    try:
        exchange = p._build()
        urls = exchange.urls["api"]
        assert exchange.isSandboxModeEnabled
        assert all(str(u).startswith(emulator.url) for u in urls.values() if isinstance(u, str))
        assert urls["public"] == emulator.url + "/api/v3"
        assert len(await p.fetch_ohlcv("BTC/USDT", "1m", T0, 3)) == 3
        await exchange.close()
    finally:
        await p.close()


async def test_used_weight_is_read_back_from_binance_header(
    plugin: CryptoPlugin, emulator: ExchangeEmulator
) -> None:
    assert plugin.used_weight() is None  # no answer yet
    await plugin.fetch_ohlcv("BTC/USDT", "1m", T0, 10)
    # exchangeInfo 20 + klines 2 (just 2 when a new minute began between them)
    assert plugin.used_weight() == emulator.weights.used in (22, 2)
    assert plugin.call_weight("fetch_ohlcv") == 2
    assert not plugin._exchange.enableRateLimit  # the provider budget paces Binance, not CCXT
