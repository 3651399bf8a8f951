"""RedisClient.run against the real Redis: a transient error is retried once, then reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from app_extensions.redis_client import RedisClient
from core.errors import DataSourceError
from tests.services.upstream.test_breaker import redis_client


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[RedisClient]:
    client = await redis_client(redis_prefix)
    yield client
    await client.close()


async def test_a_transient_error_is_retried_once(redis: RedisClient) -> None:
    calls = 0

    async def flaky(r: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("connection reset")
        return await r.ping()

    assert await redis.run(flaky) is True
    assert calls == 2
    assert redis.available


async def test_a_second_transient_error_is_reported_and_skips_redis(redis: RedisClient) -> None:
    calls = 0

    async def down(r: Any) -> Any:
        nonlocal calls
        calls += 1
        raise RedisConnectionError("connection refused")

    with pytest.raises(DataSourceError):
        await redis.run(down)
    assert calls == 2
    assert not redis.available  # skipped for DEPENDENCY_RETRY_AFTER


async def test_a_command_error_is_not_retried(redis: RedisClient) -> None:
    calls = 0

    async def wrong(r: Any) -> Any:
        nonlocal calls
        calls += 1
        return await r.execute_command("NO_SUCH_COMMAND")

    with pytest.raises(DataSourceError) as info:
        await redis.run(wrong)
    assert calls == 1
    assert isinstance(info.value.__cause__, ResponseError)
