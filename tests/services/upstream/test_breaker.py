"""services/upstream/breaker.py alone, against the real Redis: states, the shared probe, fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app_extensions.redis_client import RedisClient
from config import TestingConfig
from core.errors import NetworkPluginError, RateLimitedPluginError, UnknownSymbol
from services.upstream.breaker import BreakerSettings, CircuitBreaker, ProviderCircuitOpen, outcome_of
from tests.conftest import REDIS_URL

FAST = BreakerSettings(failure_threshold=3, open_seconds=0.3, probe_seconds=0.3)


async def redis_client(prefix: str, url: str = REDIS_URL) -> RedisClient:
    cfg = TestingConfig().as_dict()
    cfg.update(REDIS_URL=url, REDIS_PREFIX=prefix, REDIS_TIMEOUT=0.3)
    client = RedisClient()
    client._config = cfg
    await client.open()
    return client


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[RedisClient]:
    client = await redis_client(redis_prefix)
    yield client
    await client.close()


async def fail(breaker: CircuitBreaker, provider: str = "binance") -> None:
    with pytest.raises(NetworkPluginError):
        async with breaker.guard(provider):
            raise NetworkPluginError("exchange down")


async def succeed(breaker: CircuitBreaker, provider: str = "binance") -> None:
    async with breaker.guard(provider):
        pass


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("exc", "outcome"), [
    (None, "ok"),
    (NetworkPluginError("down"), "fail"),
    (RateLimitedPluginError("429"), "neutral"),  # the budget's ban pause handles rate limits
    (UnknownSymbol("nope"), "ok"),  # the exchange answered on purpose: it is up
    (asyncio.CancelledError(), "neutral"),
])
def test_outcomes(exc: BaseException | None, outcome: str) -> None:
    assert outcome_of(exc) == outcome


async def test_opens_after_threshold_and_refuses_at_once(redis: RedisClient) -> None:
    breaker = CircuitBreaker(FAST, redis)
    refused = metric("provider_breaker_rejections_total", provider="binance")
    for _ in range(2):
        await fail(breaker)
    assert await breaker.states(["binance"]) == {"binance": "closed"}
    await fail(breaker)
    assert await breaker.states(["binance", "kraken"]) == {"binance": "open", "kraken": "closed"}
    assert metric("provider_breaker_state", provider="binance") == 2
    calls = 0
    with pytest.raises(ProviderCircuitOpen) as info:
        async with breaker.guard("binance"):
            calls += 1
    assert calls == 0 and info.value.status == 503 and info.value.code == "provider_unavailable"
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    assert metric("provider_breaker_rejections_total", provider="binance") == refused + 1
    await succeed(breaker, "kraken")  # other providers are not affected


async def test_success_resets_the_consecutive_count(redis: RedisClient) -> None:
    breaker = CircuitBreaker(FAST, redis)
    for _ in range(5):
        await fail(breaker)
        await succeed(breaker)
    assert await breaker.states(["binance"]) == {"binance": "closed"}


async def test_instances_share_state_and_one_probe(redis: RedisClient, redis_prefix: str) -> None:
    other_redis = await redis_client(redis_prefix)
    try:
        a, b = CircuitBreaker(FAST, redis), CircuitBreaker(FAST, other_redis)
        await fail(a)
        await fail(b)
        await fail(a)  # three failures across two instances open it for both
        with pytest.raises(ProviderCircuitOpen):
            await b.acquire("binance")
        await asyncio.sleep(FAST.open_seconds + 0.05)
        assert await b.states(["binance"]) == {"binance": "half_open"}
        assert await a.acquire("binance") is True  # a is the cluster's one probe
        with pytest.raises(ProviderCircuitOpen):
            await b.acquire("binance")
        await a.record("binance", True, "ok")  # the probe succeeded: closed everywhere
        assert await b.acquire("binance") is False
        assert await b.states(["binance"]) == {"binance": "closed"}
    finally:
        await other_redis.close()


async def test_failed_probe_opens_again(redis: RedisClient) -> None:
    breaker = CircuitBreaker(FAST, redis)
    for _ in range(3):
        await fail(breaker)
    await asyncio.sleep(FAST.open_seconds + 0.05)
    opened = metric("provider_breaker_transitions_total", provider="binance", state="open")
    await fail(breaker)  # the probe
    assert await breaker.states(["binance"]) == {"binance": "open"}
    assert metric("provider_breaker_transitions_total", provider="binance", state="open") == opened + 1


async def test_cancelled_probe_gives_its_turn_back(redis: RedisClient) -> None:
    breaker = CircuitBreaker(FAST, redis)
    for _ in range(3):
        await fail(breaker)
    await asyncio.sleep(FAST.open_seconds + 0.05)
    with pytest.raises(asyncio.CancelledError):
        async with breaker.guard("binance"):
            raise asyncio.CancelledError
    assert await breaker.acquire("binance") is True  # another caller may probe at once


async def test_probe_that_never_ends_expires(redis: RedisClient) -> None:
    breaker = CircuitBreaker(FAST, redis)
    for _ in range(3):
        await fail(breaker)
    await asyncio.sleep(FAST.open_seconds + 0.05)
    assert await breaker.acquire("binance") is True  # this probe's instance dies
    with pytest.raises(ProviderCircuitOpen):
        await breaker.acquire("binance")
    await asyncio.sleep(FAST.probe_seconds + 0.05)
    assert await breaker.acquire("binance") is True


async def test_without_redis_the_same_machine_runs_locally(redis_prefix: str) -> None:
    dead = await redis_client(redis_prefix, "redis://127.0.0.1:1/0")  # nothing listens there
    try:
        breaker = CircuitBreaker(FAST, dead)
        for _ in range(3):
            await fail(breaker)
        assert await breaker.states(["binance"]) == {"binance": "open"}
        with pytest.raises(ProviderCircuitOpen):
            await breaker.acquire("binance")
        await asyncio.sleep(FAST.open_seconds + 0.05)
        await succeed(breaker)  # the probe
        assert await breaker.states(["binance"]) == {"binance": "closed"}
    finally:
        await dead.close()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"BREAKER_FAILURE_THRESHOLD": 0}, "BREAKER_FAILURE_THRESHOLD"),
    ({"BREAKER_OPEN_SECONDS": float("nan")}, "BREAKER_OPEN_SECONDS"),
    ({"BREAKER_PROBE_SECONDS": float("inf")}, "BREAKER_PROBE_SECONDS"),
])
def test_settings_are_validated(overrides: dict[str, Any], message: str) -> None:
    cfg = {**TestingConfig().as_dict(), **overrides}
    with pytest.raises(ValueError, match=message):
        BreakerSettings.from_config(cfg)


def test_a_bad_setting_stops_the_start(app_config: dict[str, Any]) -> None:
    from app import create_app
    from config import ConfigError

    with pytest.raises(ConfigError, match="BREAKER_OPEN_SECONDS"):
        create_app({**app_config, "BREAKER_OPEN_SECONDS": 0})


@pytest.mark.parametrize(("slow_seconds", "opened"), [(0.1, True), (5.0, False)])
async def test_a_call_cut_off_late_is_a_failure(redis: RedisClient, slow_seconds: float,
                                                opened: bool) -> None:
    breaker = CircuitBreaker(BreakerSettings(1, 30.0, 15.0, slow_seconds), redis)

    async def slow_call() -> None:
        async with breaker.guard("binance"):
            await asyncio.sleep(10)  # an exchange that does not answer

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow_call(), 0.2)  # a request deadline cuts it off
    assert await breaker.states(["binance"]) == {"binance": "open" if opened else "closed"}


async def test_a_testnet_has_a_breaker_of_its_own(redis: RedisClient) -> None:
    """A user's sandbox credentials reach another host: its failures leave the provider's own
    breaker (every other user's) closed."""
    from services.upstream.budget import ProviderBudget
    from services.upstream.calls import ProviderCalls

    breaker = CircuitBreaker(FAST, redis)
    calls = ProviderCalls(ProviderBudget({}), breaker)

    async def down() -> None:
        raise NetworkPluginError("testnet down")

    for _ in range(3):
        with pytest.raises(NetworkPluginError):
            await calls.call("binance", "fetch_ticker", down, testnet=True)
    assert await breaker.states(["binance", "binance:testnet"]) == {
        "binance": "closed", "binance:testnet": "open"}
