"""ProviderCalls: the one provider-call path (guard, metrics, paging), over the sim plugin."""

from __future__ import annotations

from typing import ClassVar

import pytest

from core.errors import PluginFeatureNotSupportedError, RateLimitedPluginError
from core.timeframes import MINUTE_MS, bucket_start, now_ms
from core.types import Series
from plugins.base import Capabilities
from plugins.sim import HISTORY_START_MS, SimPlugin
from services.upstream.budget import ProviderBudget
from services.upstream.calls import LISTING_GAP_MS, ProviderCalls
from tests.support.plugin_kit import plugin_settings

SERIES = Series("sim", "sim", "SIM/USD")
SETTINGS = plugin_settings()
T = HISTORY_START_MS + 30 * 24 * 60 * MINUTE_MS


class ShallowSim(SimPlugin):
    """The sim with a history depth, like Kraken's 720 bars (its own market: the plugin loader
    must not take it for the sim's)."""

    plugin_key: ClassVar[str] = "shallow-calls-sim"
    supported_markets: ClassVar[tuple[str, ...]] = ("shallow-calls",)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_bars_per_call=1000, extra={"history_bars": 720})


def calls() -> ProviderCalls:
    return ProviderCalls(ProviderBudget({}))


async def test_a_range_is_paged_within_max_bars_per_call() -> None:
    plugin = SimPlugin("sim", settings=SETTINGS)
    got = await calls().fetch_range(plugin, SERIES, "1m", T, T + 2500 * MINUTE_MS, budget=10)
    assert (got.calls, got.until, len(got.bars)) == (3, T + 2500 * MINUTE_MS, 2500)
    assert plugin.calls["fetch_ohlcv"] == 3
    assert [b[0] for b in got.bars] == list(range(T, T + 2500 * MINUTE_MS, MINUTE_MS))


async def test_the_call_budget_stops_paging_and_says_how_far_it_got() -> None:
    got = await calls().fetch_range(SimPlugin("sim", settings=SETTINGS), SERIES, "1m", T, T + 2500 * MINUTE_MS, 2)
    assert (got.calls, got.until, len(got.bars)) == (2, T + 2000 * MINUTE_MS, 2000)


async def test_live_paging_stops_at_the_bucket_before_the_forming_one() -> None:
    now = now_ms()
    recent = bucket_start(now, "1m") - MINUTE_MS
    since = recent - 1500 * MINUTE_MS
    polls: list[int] = []
    got = await calls().pages(SimPlugin("sim", settings=SETTINGS), SERIES, "1m", since, None, last_wanted=recent,
                              on_call=lambda: polls.append(1))
    assert len(polls) == got.calls == 2
    assert got.bars[0][0] == since and got.bars[-1][0] >= recent


async def test_history_older_than_served_is_refused_not_read_as_empty() -> None:
    with pytest.raises(PluginFeatureNotSupportedError):
        await calls().fetch_range(ShallowSim("sim", settings=SETTINGS), SERIES, "1m", T, T + MINUTE_MS, 1)


async def test_a_first_page_tells_the_listing() -> None:
    path, plugin = calls(), SimPlugin("sim", settings=SETTINGS)
    since = HISTORY_START_MS - 2 * LISTING_GAP_MS
    assert await path.first_bar(plugin, SERIES, since) == HISTORY_START_MS
    assert path._listings[("sim", "SIM/USD")] == HISTORY_START_MS
    assert path.listing(plugin, SERIES) == HISTORY_START_MS  # the sim also states it


async def test_the_guard_refuses_at_once_while_the_provider_is_paused() -> None:
    path = calls()
    await path.budget.pause("sim", 30.0)
    plugin = SimPlugin("sim", settings=SETTINGS)
    with pytest.raises(RateLimitedPluginError):
        await path.fetch_range(plugin, SERIES, "1m", T, T + MINUTE_MS, 1)
    assert plugin.calls.get("fetch_ohlcv", 0) == 0
