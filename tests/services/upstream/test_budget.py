"""Outbound budgets per provider, shared by instances through Redis, and ban pauses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart

from app import create_app
from app_extensions.services import get_services
from core.errors import RateLimitedPluginError
from services.upstream.budget import ProviderBudget, parse_budget

TICKER = "/api/v1/ticker?market=sim&provider=sim&symbol=SIM/USD"


@pytest.fixture
async def two_apps(app_config: dict[str, Any]) -> AsyncIterator[list[Quart]]:
    cfg = {**app_config, "PROVIDER_BUDGETS": {"sim": "3/60"}, "PROVIDER_BUDGET_MAX_WAIT": 0.0,
           "RATE_LIMIT_ENABLED": False}
    apps = [create_app(cfg), create_app(cfg)]
    async with apps[0].test_app(), apps[1].test_app():
        yield apps


def budget(app: Quart) -> ProviderBudget:
    return get_services(app).budget


async def test_instances_share_one_budget(two_apps: list[Quart]) -> None:
    a, b = (budget(app) for app in two_apps)
    await a.acquire("sim")
    await b.acquire("sim")
    await a.acquire("sim")
    with pytest.raises(RateLimitedPluginError) as over:
        await b.acquire("sim")
    assert over.value.retry_after is not None and 0 < over.value.retry_after <= 20.5
    await a.acquire("binance")  # other providers have budgets of their own


async def test_over_budget_ticker_answers_503_with_retry_after(two_apps: list[Quart]) -> None:
    clients = [app.test_client() for app in two_apps]
    # Symbols never asked before: no last known ticker can answer (stale while error) for the 4th.
    symbols = ["SIMA/USD", "SIMB/EUR", "SIMC/USD", "SIM/USD"]
    codes = [(await clients[i % 2].get(TICKER.replace("SIM/USD", s))).status_code
             for i, s in enumerate(symbols)]
    assert codes == [200, 200, 200, 503]
    r = await clients[0].get(TICKER)
    assert (await r.get_json())["error"]["code"] == "provider_unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    known = await clients[1].get(TICKER.replace("SIM/USD", "SIMA/USD"))  # its last ticker, flagged
    assert known.status_code == 200 and known.headers["X-Data-Stale"] == "true"


async def test_a_ban_pauses_every_instance(two_apps: list[Quart]) -> None:
    first, second = two_apps
    plugin = await get_services(first).markets.get_plugin("sim", "sim")
    calls = {"n": 0}

    async def banned(symbol: str) -> Any:
        calls["n"] += 1
        raise RateLimitedPluginError("418 I'm a teapot", retry_after=1.0)

    plugin.fetch_ticker = banned  # type: ignore[method-assign]
    r = await first.test_client().get(TICKER)
    assert r.status_code == 503 and calls["n"] == 1
    other = await get_services(second).markets.get_plugin("sim", "sim")
    other_calls = {"n": 0}
    real = other.fetch_ticker

    async def counting(symbol: str) -> Any:
        other_calls["n"] += 1
        return await real(symbol)

    other.fetch_ticker = counting  # type: ignore[method-assign]
    r = await second.test_client().get(TICKER)
    assert r.status_code == 503, "the other instance must not call a banned provider"
    assert other_calls["n"] == 0
    assert 0 < float(r.headers["Retry-After"]) <= 1
    await asyncio.sleep(1.05)
    r = await second.test_client().get(TICKER)
    assert r.status_code == 200 and other_calls["n"] == 1


async def test_calls_wait_for_their_slot_within_max_wait() -> None:
    b = ProviderBudget({"PROVIDER_BUDGETS": {"x": "10/1"}, "PROVIDER_BUDGET_MAX_WAIT": 1.0})
    started = time.monotonic()
    for _ in range(12):  # a burst of 10, then one every 100 ms
        await b.acquire("x")
    assert 0.15 <= time.monotonic() - started < 1.5


async def test_redis_down_keeps_budget_and_pause_locally(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT": 0.2,
                      "PROVIDER_BUDGETS": {"sim": "2/60"}, "PROVIDER_BUDGET_MAX_WAIT": 0.0})
    async with app.test_app():
        b = budget(app)
        await b.acquire("sim")
        await b.acquire("sim")
        with pytest.raises(RateLimitedPluginError):
            await b.acquire("sim")
        await b.pause("kraken", 5.0)
        with pytest.raises(RateLimitedPluginError) as paused:
            await b.acquire("kraken")
        assert 4 < (paused.value.retry_after or 0) <= 5.01


async def test_unbudgeted_providers_only_honour_pauses() -> None:
    b = ProviderBudget({})
    started = time.monotonic()
    for _ in range(100):
        await b.acquire("sim")  # no budget: never refused, never made to wait
    assert time.monotonic() - started < 0.5
    await b.pause("sim", 5.0)
    with pytest.raises(RateLimitedPluginError) as paused:
        await b.acquire("sim")
    assert 4 < (paused.value.retry_after or 0) <= 5.01


@pytest.mark.parametrize(("text", "expected"), [("1200/60", (1200, 60.0)), ("off", None), ("", None)])
def test_budget_parsing(text: str, expected: Any) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["x/60", "0/60", "10/0", "10/nan", "10/inf"])
def test_bad_budgets_fail_fast(text: str) -> None:
    with pytest.raises(ValueError, match="PROVIDER_BUDGETS"):
        parse_budget(text)


@pytest.mark.parametrize("retry_after", [float("inf"), 1e300])
async def test_an_absurd_retry_after_pauses_for_at_most_the_cap(retry_after: float) -> None:
    from services.upstream.budget import MAX_PAUSE_SECONDS

    b = ProviderBudget({})
    await b.pause("kraken", retry_after)  # raised OverflowError (inf) before
    with pytest.raises(RateLimitedPluginError) as paused:
        await b.acquire("kraken")
    assert 0 < (paused.value.retry_after or 0) <= MAX_PAUSE_SECONDS + 0.01


async def test_weight_read_back_past_our_share_pauses_until_the_window_ends() -> None:
    b = ProviderBudget({"PROVIDER_BUDGETS": {"x": "100/60/10"}})
    await b.read_back("x", 109)  # within our own share of a window (100 + burst 10)
    await b.acquire("x", 2)
    await b.read_back("x", 110)  # someone else spends from the same limit
    with pytest.raises(RateLimitedPluginError) as err:
        await b.acquire("x", 2)
    assert err.value.retry_after is not None and 0 < err.value.retry_after <= 60.001


async def test_a_call_takes_its_weight_from_the_budget() -> None:
    b = ProviderBudget({"PROVIDER_BUDGETS": {"x": "10/60/4"}, "PROVIDER_BUDGET_MAX_WAIT": 0.0})
    await b.acquire("x", 2)
    await b.acquire("x", 2)  # the burst of 4 units is spent by two calls of weight 2
    with pytest.raises(RateLimitedPluginError):
        await b.acquire("x", 2)
