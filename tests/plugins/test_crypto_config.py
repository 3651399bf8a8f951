"""CryptoPlugin configuration, capability data and instance lifecycle under MarketService."""

from __future__ import annotations

import time

import ccxt.async_support as ccxt_async
import pytest

from plugins.base import ProviderInfo
from plugins.ccxt_support import CAPABILITIES, rebase_urls
from plugins.crypto import CryptoPlugin
from plugins.loader import PluginLoader
from services.upstream.breaker import BreakerSettings, CircuitBreaker
from services.upstream.budget import ProviderBudget
from services.upstream.calls import ProviderCalls
from services.upstream.market_service import MarketService
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import NO_LEAKS
from tests.support.helpers import clear_shared_markets
from tests.support.plugin_kit import EMULATOR, plugin_config, plugin_settings

pytestmark = NO_LEAKS
emulator = fixtures.emulator
T0 = 1_704_067_200_000  # Monday 2024-01-01 00:00 UTC


def test_rebase_urls_keeps_paths_and_nested_families() -> None:
    urls = {"public": "https://api.binance.com/api/v3", "v2": {"rest": "https://api.{hostname}/v2"},
            "list": ["https://x.io/a?b=1"], "other": 5}
    assert rebase_urls(urls, "http://127.0.0.1:9100/proxy/") == {
        "public": "http://127.0.0.1:9100/proxy/api/v3",
        "v2": {"rest": "http://127.0.0.1:9100/proxy/v2"},
        "list": ["http://127.0.0.1:9100/proxy/a?b=1"], "other": 5}


def test_configuration() -> None:
    settings = plugin_settings(EMULATOR, CCXT_EXCHANGES="binance, kraken", CCXT_CREDENTIALS={
        "binance": {"apiKey": "k", "secret": "s", "testnet": "true"}})
    providers = CryptoPlugin.list_configurable_providers(settings)
    assert [p.provider for p in providers] == ["binance", "kraken"]
    assert providers[1] == ProviderInfo("kraken", False, True, list(CAPABILITIES["kraken"].timeframes))
    assert CryptoPlugin.settings_from_config("binance", settings) == ({"apiKey": "k", "secret": "s"}, True)
    assert CryptoPlugin.settings_from_config("kraken", settings) == ({}, False)


@pytest.mark.parametrize("exchange_id", sorted(CAPABILITIES))
def test_capability_timeframes_exist_in_ccxt(exchange_id: str) -> None:
    exchange = getattr(ccxt_async, exchange_id)()
    assert set(CAPABILITIES[exchange_id].timeframes) <= set(exchange.timeframes)


async def test_market_service_instances_with_the_real_plugin(emulator: ExchangeEmulator) -> None:
    """Same provider: one instance; other credentials/testnet: another; idle: closed, reopened."""
    clear_shared_markets()
    loader = PluginLoader(["crypto"])
    loader.load()
    base = plugin_config(EMULATOR, CCXT_EXCHANGES="binance", PROVIDER_URLS={"binance": emulator.url},
                   PLUGIN_IDLE_TIMEOUT=10)
    keyed = {**base, "CCXT_CREDENTIALS": {"binance": {"apiKey": "k", "secret": "s"}}}
    testnet = {**base, "CCXT_CREDENTIALS": {"binance": {"apiKey": "k", "secret": "s",
                                                       "testnet": True}}}
    services = [MarketService(loader, cfg, ProviderCalls(ProviderBudget(cfg),
                                                         CircuitBreaker(BreakerSettings.from_config(cfg))),
                              plugin_settings(cfg))
                for cfg in (base, keyed, testnet)]
    try:
        first = await services[0].get_plugin("crypto", "binance")
        assert isinstance(first, CryptoPlugin)
        assert await services[0].get_plugin("crypto", "binance") is first
        assert len(await first.fetch_ohlcv("BTC/USDT", "1m", T0, 3)) == 3
        others = [await ms.get_plugin("crypto", "binance") for ms in services[1:]]
        assert [(p.credentials, p.testnet) for p in others] == [
            ({"apiKey": "k", "secret": "s"}, False), ({"apiKey": "k", "secret": "s"}, True)]
        assert await services[0].close_idle(now=time.monotonic() + 60) == 1
        assert first._exchange is None  # the CCXT session was closed
        again = await services[0].get_plugin("crypto", "binance")
        assert again is not first
        assert len(await again.fetch_ohlcv("BTC/USDT", "1m", T0, 3)) == 3
    finally:
        for ms in services:
            await ms.close()
