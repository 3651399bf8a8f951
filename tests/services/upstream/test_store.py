"""services/upstream/store.py: the Redis and the memory backend give the same answers to the same
sequence (one parametrized test per algorithm), and ``Store`` swaps between them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app_extensions.redis_client import RedisClient
from core.errors import DataSourceError
from services.upstream.store import Admit, Budget, Gate, Gcra, MemoryStore, RedisStore, Store, StoreBackend
from tests.services.upstream.test_breaker import redis_client

#: Answers' ms (retry or wait) are on each backend's own clock: equal within this much.
SLACK_MS = 60


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[RedisClient]:
    client = await redis_client(redis_prefix)
    yield client
    await client.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, redis: RedisClient) -> StoreBackend:
    return MemoryStore() if request.param == "memory" else RedisStore(redis)


def close(got: list[Any], expected: list[Any]) -> None:
    """``got`` equals ``expected``, their last field (ms) within ``SLACK_MS``."""
    assert len(got) == len(expected)
    for answer, want in zip(got, expected, strict=True):
        assert type(answer) is type(want)
        assert answer[:-1] == want[:-1], (got, expected)
        assert abs(answer[-1] - want[-1]) <= SLACK_MS, (got, expected)


async def test_the_limiters_gcra_answers_the_same(backend: StoreBackend) -> None:
    key, emission, burst = ("rl", "default:ip:1"), 1000.0, 3  # 3 per 3 s
    got = [await backend.gcra(key, emission, burst, 1, partial=True, peek=True),
           await backend.gcra(key, emission, burst, 2, partial=True),  # a lease of 2
           await backend.gcra(key, emission, burst, 5, partial=True),  # only 1 left
           await backend.gcra(key, emission, burst, 1, partial=True),  # refused: 1 s to wait
           await backend.gcra(key, emission, burst, 1, partial=True, peek=True)]
    close(got, [Gcra(1, 0, 0), Gcra(2, 1, 0), Gcra(1, 0, 0), Gcra(0, 0, 1000), Gcra(0, 0, 1000)])


async def test_the_budgets_gcra_answers_the_same(backend: StoreBackend) -> None:
    pause, tat = ("budget", "pause", "x"), ("budget", "tat", "x")
    emission, burst, max_wait = 500.0, 2, 700.0  # 2 per s, a burst of 2, wait up to 0.7 s
    got: list[Any] = [await backend.budget(pause, tat, emission, burst, max_wait) for _ in range(4)]
    got.append(await backend.budget(pause, tat, emission, burst, max_wait, weight=3))  # 1.5 s away
    got.append(await backend.budget(pause, tat, 0.0, 0, max_wait))  # no budget: go
    await backend.pause(pause, 2000)
    got.append(await backend.budget(pause, tat, emission, burst, max_wait))
    close(got, [Budget(1, 0), Budget(1, 0), Budget(1, 500), Budget(0, 1000), Budget(0, 2000),
                Budget(1, 0), Budget(-1, 2000)])


async def test_the_breaker_answers_the_same(backend: StoreBackend) -> None:
    key, threshold, open_ms, probe_ms = ("breaker", "x"), 2, 200, 200
    settings = probe_ms, threshold, open_ms
    assert await backend.states([key]) == ["closed"]
    first = [await backend.acquire(key, *settings),
             await backend.record(key, "fail", False, *settings),
             await backend.acquire(key, *settings),  # one failure counted
             await backend.record(key, "fail", False, *settings),  # opens
             await backend.record(key, "fail", False, *settings),  # open: nothing more
             await backend.acquire(key, *settings)]  # refused for the open time
    close([first[0], first[2], first[5]], [Admit(0, 0), Admit(0, 1), Admit(2, open_ms)])
    assert first[1] == ("closed", False) and first[3] == ("open", True) and first[4] == ("open", False)
    assert await backend.states([key, ("breaker", "other")]) == ["open", "closed"]
    await asyncio.sleep(0.25)
    assert await backend.states([key]) == ["half_open"]
    assert await backend.acquire(key, *settings) == Admit(1, 0)  # the probe
    close([await backend.acquire(key, *settings)], [Admit(2, probe_ms)])  # others wait for it
    assert await backend.record(key, "neutral", True, *settings) == ("half_open", False)
    assert await backend.acquire(key, *settings) == Admit(1, 0)  # the probe's turn given back
    assert await backend.record(key, "ok", True, *settings) == ("closed", True)
    assert await backend.acquire(key, *settings) == Admit(0, 0)


async def test_the_gate_answers_as_the_breaker_then_the_budget(backend: StoreBackend) -> None:
    breaker, pause, tat = ("breaker", "g"), ("budget", "pause", "g"), ("budget", "tat", "g")

    async def gate() -> Gate:  # breaker: probe 200 ms, 5 failures, open 60 s; budget: 1 per s, burst 1
        return await backend.gate(breaker, pause, tat, 200, 5, 60_000, 1000.0, 1, 0.0, 1)

    got = [await gate(), await gate()]
    for _ in range(5):
        await backend.record(breaker, "fail", False, 200, 5, 60_000)
    got.append(await gate())  # the breaker refuses: the budget is not asked
    assert [g.admit.code for g in got] == [0, 0, 2]
    close([g.budget for g in got], [Budget(1, 0), Budget(0, 1000), Budget(1, 0)])
    assert isinstance(got[0], Gate)


async def test_the_store_asks_redis_and_falls_back_to_memory(redis: RedisClient, redis_prefix: str) -> None:
    dead = await redis_client(redis_prefix, "redis://127.0.0.1:1/0")  # nothing listens there
    try:
        store, fallbacks = Store(dead), list[DataSourceError]()
        key = ("rl", "k")
        got = [await store.gcra(key, 1000.0, 2, partial=True, on_local=fallbacks.append) for _ in range(3)]
        assert [g.granted for g in got] == [1, 1, 0]  # decided in memory
        assert len(fallbacks) == 3 and all(isinstance(e, DataSourceError) for e in fallbacks)
        store = Store(redis, store.memory)  # Redis answers again: its bucket (still full) decides
        assert (await store.gcra(key, 1000.0, 2, partial=True, on_local=fallbacks.append)).granted == 1
        assert len(fallbacks) == 3
        assert await redis.run(lambda r: r.exists(redis.key("rl", "k"))) == 1
        await store.pause(("budget", "pause", "p"), 5000)  # paused in memory as well as in Redis
        store = Store(dead, store.memory)
        answer = await store.budget(("budget", "pause", "p"), ("budget", "tat", "p"), 0.0, 0, 0.0,
                                    on_local=fallbacks.append)
        assert answer.status == -1 and 4000 < answer.ms <= 5000 and len(fallbacks) == 4
    finally:
        await dead.close()
