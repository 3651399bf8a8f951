"""MarketService: plugin instances are cached per provider, credentials and testnet; idle ones close."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from core.errors import UnknownMarket, UnknownProvider
from plugins.base import MarketPlugin, PluginSettings
from plugins.loader import PluginLoader
from plugins.sim import SimPlugin
from services.upstream.breaker import BreakerSettings, CircuitBreaker
from services.upstream.budget import ProviderBudget
from services.upstream.calls import ProviderCalls
from services.upstream.credentials import UserCredentials
from services.upstream.market_service import MarketService, credentials_marker
from tests.support.plugin_kit import plugin_settings
from tests.support.ws import wait_for

SETTINGS = plugin_settings()


class KeyedSim(SimPlugin):
    """A sim plugin whose credentials and testnet flag come from config (test double)."""

    plugin_key: ClassVar[str] = "keyed-sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("keyed",)
    closed: ClassVar[list[str]] = []

    @classmethod
    def settings_from_config(cls, provider_id: str, settings: PluginSettings) -> tuple[dict[str, str], bool]:
        entry = dict(settings.ccxt_credentials.get(provider_id, {}))
        return entry, bool(entry.pop("testnet", False))

    async def close(self) -> None:
        KeyedSim.closed.append(self.provider_id)


def service(config: dict[str, Any]) -> MarketService:
    loader = PluginLoader(["sim", "keyed"])
    loader.load()
    config = {"PLUGIN_IDLE_TIMEOUT": 10, **config}
    calls = ProviderCalls(ProviderBudget(config), CircuitBreaker(BreakerSettings.from_config(config)))
    # KEYS and TESTNET: what KeyedSim's provider is configured with (as CCXT_CREDENTIALS says it).
    keys = {**config.get("KEYS", {}), "testnet": config.get("TESTNET", False)}
    return MarketService(loader, config, calls, plugin_settings(CCXT_CREDENTIALS={"sim": keys}))


async def test_same_provider_reuses_one_instance() -> None:
    ms = service({})
    a = await ms.get_plugin("sim", "sim")
    b = await ms.get_plugin("sim", "sim")
    assert a is b and isinstance(a, MarketPlugin) and len(ms._instances) == 1
    await ms.close()


async def test_credentials_and_testnet_get_their_own_instances() -> None:
    plain, keyed = service({}), service({"KEYS": {"apiKey": "k", "secret": "s"}})
    testnet = service({"KEYS": {"apiKey": "k", "secret": "s"}, "TESTNET": True})
    keys = []
    for ms in (plain, keyed, testnet):
        await ms.get_plugin("keyed", "sim")
        keys.append(next(iter(ms._instances)))
        await ms.close()
    assert len(set(keys)) == 3
    assert keys[0][2] == "public" and "s" not in keys[1][2]


async def test_idle_instances_are_closed_and_reopened() -> None:
    KeyedSim.closed.clear()
    ms = service({})
    first = await ms.get_plugin("keyed", "sim")
    assert await ms.close_idle(now=10**9) == 1
    assert KeyedSim.closed == ["sim"] and len(ms._instances) == 0
    second = await ms.get_plugin("keyed", "sim")
    assert second is not first and len(ms._instances) == 1
    await ms.close()


def creds(owner: str, n: int) -> UserCredentials:
    return UserCredentials("sim", f"key-{n}", f"secret-{n}", owner=owner)


async def test_a_users_new_credentials_close_the_old_instance() -> None:
    """Issue 23 (3): 60 credential PUTs made 60 live instances. A user now has one per provider;
    the replaced one is closed once calls running on it had REQUEST_DEADLINE to end."""
    KeyedSim.closed.clear()
    ms = service({"REQUEST_DEADLINE": 0.05})
    for n in range(60):
        await ms.get_plugin("keyed", "sim", creds("alice", n))
    assert len(ms._instances) == 1
    await wait_for(lambda: len(KeyedSim.closed) >= 59)  # closed once REQUEST_DEADLINE passed
    assert len(KeyedSim.closed) == 59
    # Replacing (PUT) or deleting credentials retires the instance at once.
    await ms.forget_user("alice", "sim")
    assert not ms._instances
    await ms.close()
    assert len(KeyedSim.closed) == 60


async def test_instances_are_bounded_in_all_and_per_user_least_recently_used_first() -> None:
    KeyedSim.closed.clear()
    ms = service({"REQUEST_DEADLINE": 0.01, "PLUGIN_MAX_INSTANCES": 4, "PLUGIN_MAX_INSTANCES_PER_USER": 2})
    shared = await ms.get_plugin("keyed", "sim")
    users = [await ms.get_plugin("keyed", "sim", creds(f"u{n}", n)) for n in range(6)]
    assert len(ms._instances) == 4
    assert await ms.get_plugin("keyed", "sim", creds("u5", 5)) is users[5]  # recent ones stay
    assert shared not in [e.plugin for e in ms._instances.values()]  # least recently used: closed
    # Per user: a third provider instance of one user closes that user's oldest.
    bob = [await ms.get_plugin(market, "sim", UserCredentials("sim", "k", "s", owner="bob"))
           for market in ("keyed", "sim")]
    assert len([k for k in ms._instances if ":bob:" in k[2]]) <= 2 and bob
    await wait_for(lambda: len(KeyedSim.closed) >= 3)
    assert len(KeyedSim.closed) >= 3
    await ms.close()


async def test_symbol_lists_go_with_their_instance_and_are_bounded() -> None:
    ms = service({"REQUEST_DEADLINE": 0.01})
    for n in range(5):
        await ms.symbols("keyed", "sim", creds("alice", n))
    assert len(ms._symbols) == 1  # each new credential retired the last one's list
    await ms.close()


async def test_unknown_market_and_provider() -> None:
    ms = service({})
    with pytest.raises(UnknownMarket):
        await ms.get_plugin("forex", "sim")
    with pytest.raises(UnknownProvider):
        await ms.get_plugin("sim", "binance")


def test_credentials_marker_hides_secrets() -> None:
    assert credentials_marker({}) == "public"
    marker = credentials_marker({"apiKey": "abc", "secret": "topsecret"})
    assert "topsecret" not in marker and marker == credentials_marker({"secret": "topsecret", "apiKey": "abc"})


# --- The sim plugin ------------------------------------------------------------------------------
def test_sim_closed_bars_equal_sim_bar_minute_by_minute() -> None:
    import random

    from plugins.sim import MINUTE_MS, SYMBOLS, closed_bars, sim_bar

    rng = random.Random(7)
    for symbol in SYMBOLS:
        for _ in range(10):
            start = rng.randrange(27_000_000, 30_000_000) * MINUTE_MS
            n = rng.randrange(0, 200)
            assert closed_bars(42, symbol, start, start + n * MINUTE_MS) == [
                sim_bar(42, symbol, start + i * MINUTE_MS) for i in range(n)]


async def test_sim_history_starts_at_its_opening_and_coarse_pages_leave_the_loop_free() -> None:
    """A 1d page from the epoch starts at the sim's opening (not 1970: decades of minutes would
    block the event loop for minutes) and is computed while the loop keeps running."""
    import time

    from core.timeframes import DAY_MS, bucket_start, resample
    from plugins.sim import HISTORY_START_MS, closed_bars

    plugin = SimPlugin("sim", settings=SETTINGS)
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    beat = asyncio.create_task(heartbeat())
    try:
        bars = await plugin.fetch_ohlcv("SIM/USD", "1d", 0, 60)
    finally:
        beat.cancel()
    first = bucket_start(HISTORY_START_MS, "1d")
    assert [b[0] for b in bars] == [first + i * DAY_MS for i in range(60)]
    want = resample(closed_bars(42, "SIM/USD", first, first + 60 * DAY_MS), "1d")
    assert [b[:5] for b in bars] == [w[:5] for w in want]  # volumes: sums in another order
    assert all(abs(b[5] - w[5]) < 1e-6 * w[5] for b, w in zip(bars, want, strict=True))
    assert gaps and max(gaps) < 0.5, max(gaps)
    assert await plugin.fetch_ohlcv("SIM/USD", "1m", 0, 10, HISTORY_START_MS) == []
    assert (await plugin.fetch_ohlcv("SIM/USD", "1m", 0, 1))[0][0] == HISTORY_START_MS
