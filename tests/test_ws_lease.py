"""SubscriptionRegistry against real Redis: one holder per channel, compare-and-renew, release only
by the holder, takeover after expiry, memory mode without Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app_extensions.redis_client import RedisClient
from services.broadcast import BroadcastManager, SubscriptionRegistry
from tests.conftest import REDIS_URL
from tests.ws_support import wait_for

CHANNEL = "sim:sim:SIM/USD:1m"
TTL = 0.3


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[RedisClient]:
    client = RedisClient()
    client._config = {"REDIS_PREFIX": redis_prefix, "DEPENDENCY_RETRY_AFTER": 0.1, "REDIS_URL": REDIS_URL,
                      "REDIS_TIMEOUT": 1.0, "SHUTDOWN_TIMEOUT": 2.0, "REDIS_MAX_CONNECTIONS": 20}
    await client.open()
    try:
        yield client
    finally:
        await client.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def attach(self, registry: SubscriptionRegistry) -> SubscriptionRegistry:
        async def gain(channel: str) -> None:
            self.events.append(("gain", channel))

        async def loss(channel: str) -> None:
            self.events.append(("loss", channel))
        registry.on_gain, registry.on_loss = gain, loss
        return registry


def redis_mode(broadcast: BroadcastManager) -> BroadcastManager:
    broadcast._connected = True  # pub/sub not needed here: only the lease path is exercised
    return broadcast


async def test_one_holder_renewal_release_and_takeover(redis: RedisClient) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = rec_a.attach(SubscriptionRegistry(redis, redis_mode(BroadcastManager(redis)), ttl=TTL, instance_id="a"))
    b = rec_b.attach(SubscriptionRegistry(redis, redis_mode(BroadcastManager(redis)), ttl=TTL, instance_id="b"))
    await a.add(CHANNEL)
    await b.add(CHANNEL)
    assert (a.polling, b.polling) == ({CHANNEL}, set())
    assert await a.holder(CHANNEL) == "a" and a.mode == b.mode == "redis"
    for _ in range(4):  # renewals by the holder keep the lease past its TTL
        await asyncio.sleep(TTL / 2)
        await a._tick(CHANNEL)
        await b._tick(CHANNEL)
    assert await a.holder(CHANNEL) == "a" and not b.polling
    await b.remove(CHANNEL)  # a non-holder leaving does not touch the lease
    assert await a.holder(CHANNEL) == "a"
    await b.add(CHANNEL)
    await asyncio.sleep(TTL * 1.5)  # the holder stops renewing (it died): the lease expires
    await b._tick(CHANNEL)
    assert b.polling == {CHANNEL} and await b.holder(CHANNEL) == "b"
    await a._tick(CHANNEL)  # the old holder finds the lease gone to b: it stops polling
    assert a.polling == set() and rec_a.events == [("gain", CHANNEL), ("loss", CHANNEL)]
    await b.remove(CHANNEL)  # the holder leaving releases at once
    assert await b.holder(CHANNEL) is None and rec_b.events == [("gain", CHANNEL), ("loss", CHANNEL)]


async def test_without_redis_every_instance_polls_its_channels() -> None:
    rec: Any = Recorder()
    registry = rec.attach(SubscriptionRegistry(None, BroadcastManager(None), ttl=TTL, instance_id="x"))
    await registry.add(CHANNEL)
    assert registry.polling == {CHANNEL} and registry.mode == "memory"
    await registry.close()
    assert rec.events == [("gain", CHANNEL), ("loss", CHANNEL)]


async def test_a_foreign_message_on_a_frame_channel_does_not_break_fan_out(redis: RedisClient) -> None:
    """A payload that is not a frame envelope is dropped; the reader keeps its subscription (it
    used to reconnect after DEPENDENCY_RETRY_AFTER, losing the frames published meanwhile)."""
    broadcast = BroadcastManager(redis, retry_after=5.0)
    got: list[tuple[str, int, str]] = []
    broadcast.set_handler(lambda ch, ts, t_poll, text: got.append((ch, ts, text)))
    await broadcast.subscribe(CHANNEL)
    await broadcast.start()
    try:
        await wait_for(lambda: broadcast.mode == "redis", within=5)
        key = redis.key("ws", "bars", CHANNEL)
        await redis.run(lambda r: r.publish(key, "not an envelope"))
        await broadcast.publish(CHANNEL, {"type": "status"}, -1, 1.0)
        await wait_for(lambda: got, within=2)
        assert got == [(CHANNEL, -1, '{"type":"status"}')] and broadcast.mode == "redis"
    finally:
        await broadcast.close()
