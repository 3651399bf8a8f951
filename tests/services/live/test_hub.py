"""Leases and fan-out against real Redis: one holder per channel, compare-and-renew, release only
by the holder, takeover after expiry, a poller that stops when it loses its lease, memory mode
without Redis, foreign messages on a frame topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app_extensions.redis_client import RedisClient
from core.types import Channel
from services.bus.broadcast import Broadcast, Lease
from services.bus.redis_backend import RedisBackend
from services.live.frames import Frame, StatusFrame
from services.live.hub import Hub
from services.live.poller import Poller
from services.live.settings import HubSettings, PollSettings
from services.live.state import StateStore
from tests.conftest import REDIS_URL
from tests.services.live.test_poller import FakeMarkets, FakePlugin, Out, bar
from tests.support.ws import wait_for

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


async def on_redis(redis: RedisClient) -> Broadcast:
    broadcast = Broadcast(RedisBackend(redis), retry_after=5.0)
    await broadcast.connect()
    assert broadcast.mode == "redis"
    return broadcast


async def test_one_holder_renewal_release_and_takeover(redis: RedisClient) -> None:
    ab, bb = await on_redis(redis), await on_redis(redis)
    a, b = Lease(ab, CHANNEL, "a", TTL), Lease(bb, CHANNEL, "b", TTL)
    try:
        assert (await a.acquire(), await b.acquire()) == (True, False)
        assert await ab.backend.holder(CHANNEL) == "a" and ab.mode == bb.mode == "redis"
        for _ in range(4):  # renewals by the holder keep the lease past its TTL
            await asyncio.sleep(TTL / 2)
            assert (await a.acquire(), await b.acquire()) == (True, False)
        assert await ab.backend.holder(CHANNEL) == "a"
        await b.release()  # a non-holder leaving does not touch the lease
        assert await ab.backend.holder(CHANNEL) == "a"
        await asyncio.sleep(TTL * 1.5)  # the holder stops renewing (it died): the lease expires
        assert await b.acquire() and await bb.backend.holder(CHANNEL) == "b"
        assert not await a.acquire()  # the old holder finds the lease gone to b: it stops polling
        await b.release()  # the holder leaving releases at once
        assert await bb.backend.holder(CHANNEL) is None
    finally:
        await ab.disconnect()
        await bb.disconnect()


async def test_a_poller_renews_its_own_lease_and_stops_when_it_loses_it(redis: RedisClient) -> None:
    broadcast = await on_redis(redis)
    plugin = FakePlugin()
    plugin.answer = [bar(1_700_000_040_000, 1.0)]
    poller = Poller(Channel.parse(CHANNEL), markets=FakeMarkets(plugin),  # type: ignore[arg-type]
                    out=Out(), store=StateStore(broadcast), db=None,
                    settings=PollSettings(intervals={}, default_interval=0.05, revision_seconds=0.0))
    lease = Lease(broadcast, CHANNEL, "a", TTL)
    assert await lease.acquire()
    task = asyncio.create_task(poller.run(lease))
    try:
        await asyncio.sleep(TTL * 2)  # renewed by the poller itself: still held, still polling
        assert await broadcast.backend.holder(CHANNEL) == "a" and not task.done()
        assert poller.polls > 1
        await redis.run(lambda r: r.set(redis.key("ws", "lease", CHANNEL), "b", px=5000))
        await asyncio.wait_for(task, TTL * 2)  # lost at its next renewal: the poller stops
        assert await broadcast.backend.holder(CHANNEL) == "b"
    finally:
        task.cancel()
        await broadcast.disconnect()


async def test_without_redis_every_instance_polls_its_channels() -> None:
    broadcast = Broadcast(None, retry_after=1.0)
    await broadcast.connect()
    assert await Lease(broadcast, CHANNEL, "x", TTL).acquire() and broadcast.mode == "memory"
    assert await Lease(broadcast, CHANNEL, "y", TTL).acquire()


class Listener:
    def __init__(self) -> None:
        self.got: list[Frame] = []

    def deliver(self, frame: Frame) -> None:
        self.got.append(frame)


async def test_a_foreign_message_on_a_frame_channel_does_not_break_fan_out(redis: RedisClient) -> None:
    """A payload that is not a frame is dropped; the reader keeps its subscription (it used to
    reconnect after DEPENDENCY_RETRY_AFTER, losing the frames published meanwhile)."""
    broadcast = Broadcast(RedisBackend(redis), retry_after=5.0)

    def no_poller(channel: Channel, out: Any) -> Poller:
        raise AssertionError("not polled here")

    hub = Hub(broadcast, no_poller, HubSettings(lease_ttl=60.0), "i")
    lease = redis.key("ws", "lease", CHANNEL)
    await redis.run(lambda r: r.set(lease, "another instance", px=60_000))  # it polls, not this one
    await hub.start()
    listener = Listener()
    try:
        async with hub.subscribe(Channel.parse(CHANNEL), listener):
            await wait_for(lambda: broadcast.mode == "redis", within=5)
            key = redis.key("ws", "bars", CHANNEL)
            await redis.run(lambda r: r.publish(key, "not an envelope"))
            await hub.publish(StatusFrame(CHANNEL, "live", "x", 1.0))
            await wait_for(lambda: listener.got, within=2)
            assert [f.text for f in listener.got] == [
                '{"type":"status","channel":"sim:sim:SIM/USD:1m","state":"live","reason":"x"}']
            assert broadcast.mode == "redis"
    finally:
        await hub.close()
