"""services/upstream/gate.py against the real Redis: the breaker's admission and the budget's slot
in one script, the breaker's quiet successes, and the same decisions as the two gates alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from app_extensions.redis_client import RedisClient
from config import TestingConfig
from core.errors import NetworkPluginError, RateLimitedPluginError
from services.upstream.breaker import BreakerSettings, CircuitBreaker, ProviderCircuitOpen
from services.upstream.budget import ProviderBudget
from services.upstream.calls import ProviderCalls
from tests.conftest import REDIS_URL

FAST = BreakerSettings(failure_threshold=3, open_seconds=0.3, probe_seconds=0.3)


class Counting:
    """The app's Redis client, counting the commands run through it (each one really runs)."""

    def __init__(self, client: RedisClient) -> None:
        self.client, self.runs = client, 0

    def key(self, *parts: object) -> str:
        return self.client.key(*parts)

    async def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        self.runs += 1
        return await self.client.run(fn)


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[Counting]:
    cfg = TestingConfig().as_dict()
    cfg.update(REDIS_URL=REDIS_URL, REDIS_PREFIX=redis_prefix, REDIS_TIMEOUT=0.3)
    client = RedisClient()
    client._config = cfg
    await client.open()
    yield Counting(client)
    await client.close()


def instance(redis: Counting, budgets: dict[str, str] | None = None) -> ProviderCalls:
    """One instance's provider-call path, sharing ``redis`` with the others."""
    return ProviderCalls(ProviderBudget({"PROVIDER_BUDGETS": budgets or {}}, redis),
                         CircuitBreaker(FAST, redis))


def breaker(calls: ProviderCalls) -> CircuitBreaker:
    assert calls.breaker is not None
    return calls.breaker


async def fail(calls: ProviderCalls, provider: str = "binance") -> None:
    with pytest.raises(NetworkPluginError):
        async with calls.guard(provider):
            raise NetworkPluginError("exchange down")


async def failures(redis: Counting, provider: str = "binance") -> int:
    key = redis.key("breaker", provider)
    return int(await redis.client.run(lambda r: r.hget(key, "failures")) or 0)


async def test_a_call_with_nothing_to_record_costs_one_script(redis: Counting) -> None:
    calls = instance(redis)
    for _ in range(3):
        async with calls.guard("binance"):
            pass
    assert redis.runs == 3  # was three a call: breaker, budget, the breaker's record
    await fail(calls)
    assert (redis.runs, await failures(redis)) == (5, 1)  # the gate, then the failure recorded
    async with calls.guard("binance"):
        pass
    assert (redis.runs, await failures(redis)) == (7, 0)  # a failure to reset: recorded


async def test_a_failure_counted_during_a_quiet_call_is_reset_by_the_next_success(
        redis: Counting) -> None:
    a, b = instance(redis), instance(redis)
    async with a.guard("binance"):  # began with no failure counted
        await fail(b)
    assert await failures(redis) == 1  # the quiet success had nothing to reset when it began
    async with a.guard("binance"):
        pass
    assert await failures(redis) == 0
    for _ in range(2):  # so three failures with a success between still do not open it
        await fail(b)
    assert await breaker(a).states(["binance"]) == {"binance": "closed"}


async def test_an_open_breaker_refuses_before_the_budget_is_spent(redis: Counting) -> None:
    calls = instance(redis, {"kraken": "10/60/10"})
    for _ in range(3):
        await fail(calls, "kraken")  # three of kraken's ten calls a minute taken...
    tat = redis.key("budget", "tat", "kraken")
    before = await redis.client.run(lambda r: r.get(tat))
    with pytest.raises(ProviderCircuitOpen):
        async with calls.guard("kraken"):
            pytest.fail("an open breaker let a call through")
    assert await redis.client.run(lambda r: r.get(tat)) == before  # ...and no more were taken


async def test_a_probe_refused_by_the_budget_gives_its_turn_back(redis: Counting) -> None:
    calls = instance(redis, {"kraken": "3/60/3"})
    for _ in range(3):
        await fail(calls, "kraken")  # open; and kraken's three calls a minute are spent
    with pytest.raises(ProviderCircuitOpen):
        async with calls.guard("kraken"):
            pass
    await asyncio.sleep(FAST.open_seconds + 0.05)
    with pytest.raises(RateLimitedPluginError):  # admitted as the probe, then over budget
        async with calls.guard("kraken"):
            pytest.fail("an exhausted budget let a call through")
    assert await breaker(instance(redis)).acquire("kraken") is True  # the probe is free again


async def test_a_paused_provider_is_refused_and_the_breaker_does_not_count_it(
        redis: Counting) -> None:
    calls = instance(redis)
    await calls.budget.pause("binance", 30.0)
    for _ in range(4):
        with pytest.raises(RateLimitedPluginError):
            async with calls.guard("binance"):
                pytest.fail("a paused provider was called")
    assert await breaker(calls).states(["binance"]) == {"binance": "closed"}


async def test_without_redis_each_gate_decides_in_memory() -> None:
    calls = ProviderCalls(ProviderBudget({}), CircuitBreaker(FAST))
    async with calls.guard("binance"):
        pass
    for _ in range(3):
        await fail(calls)
    with pytest.raises(ProviderCircuitOpen):
        async with calls.guard("binance"):
            pass
