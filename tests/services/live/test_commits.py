"""GroupCommit against real Redis (and memory): a burst of channels committed in one round trip, each
with consecutive seqs after its own and its state saved; the lease fence; a counter ahead of the
restored state (a hand-over after kill -9); a poller stopped by its fence; batched leases."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app_extensions.redis_client import RedisClient
from core.timeframes import now_ms
from core.types import Channel
from services.bus.broadcast import Broadcast, Lease, LeaseLost
from services.live.commits import BARS, Commit, GroupCommit
from services.live.frames import BarFrame, decode
from services.live.hub import Hub
from services.live.poller import Poller
from services.live.settings import HubSettings, PollSettings
from services.live.state import PollerState, StateStore
from tests.services.live.test_hub import on_redis, redis  # noqa: F401  (fixture)
from tests.services.live.test_poller import FakeMarkets, FakePlugin, bar
from tests.support.ws import wait_for

N = 50
T = 1_700_000_040_000


def no_poller(channel: Channel, out: Any) -> Poller:
    raise AssertionError("the test runs its poller itself")


def name(i: int) -> str:
    return f"crypto:binance:X{i:03d}/USDT:1m"


def frames(channel: str, *closes: float) -> list[BarFrame]:
    return [BarFrame(channel, bar(T + 60_000 * k, c), k < len(closes) - 1, 0)
            for k, c in enumerate(closes)]


async def counter(redis: RedisClient, channel: str) -> int | None:  # noqa: F811
    raw = await redis.run(lambda r: r.get(redis.key("ws", "seq", channel)))
    return None if raw is None else int(raw)


async def received(broadcast: Broadcast, count: int) -> list[BarFrame]:
    out = []
    for _ in range(count):
        _, payload = await asyncio.wait_for(broadcast.next_published(), 5)
        frame = decode(payload)
        assert isinstance(frame, BarFrame)
        out.append(frame)
    return out


async def test_a_burst_is_one_round_trip_with_consecutive_seqs_and_states_saved(
        redis: RedisClient) -> None:  # noqa: F811
    broadcast = await on_redis(redis)
    listener = await on_redis(redis)
    try:
        for i in range(N):
            await listener.subscribe(BARS + name(i))
        store = StateStore(broadcast)
        commits = GroupCommit(store)
        states = [PollerState(seq=10 * i) for i in range(N)]  # each channel has its own counter
        await asyncio.gather(*(commits.commit(Commit(name(i), frames(name(i), 1.0, 2.0), states[i]))
                               for i in range(N)))
        assert (commits.batched.sends, commits.batched.calls) == (1, N)
        assert [s.seq for s in states] == [10 * i + 2 for i in range(N)]
        got = await received(listener, 2 * N)
        by_channel: dict[str, list[int]] = {}
        for f in got:
            by_channel.setdefault(f.channel, []).append(f.seq)
        assert by_channel == {name(i): [10 * i + 1, 10 * i + 2] for i in range(N)}
        fresh = StateStore(await on_redis(redis))  # another instance reads what was saved
        for i in (0, N - 1):
            saved = await fresh.load(name(i))
            assert saved is not None and saved.seq == 10 * i + 2
            assert await counter(redis, name(i)) == 10 * i + 2
        await commits.close()
        await fresh.broadcast.disconnect()
    finally:
        await broadcast.disconnect()
        await listener.disconnect()


async def test_the_lease_fence_and_a_counter_ahead(redis: RedisClient) -> None:  # noqa: F811
    broadcast = await on_redis(redis)
    listener = await on_redis(redis)
    try:
        for i in range(3):
            await listener.subscribe(BARS + name(i))
        commits = GroupCommit(StateStore(broadcast))
        mine, taken, free = (Lease(broadcast, name(i), "me", 60.0) for i in range(3))
        assert await mine.acquire()
        assert await Lease(broadcast, name(1), "other", 60.0).acquire()
        # channel 0: the counter is ahead of the state this poller restored (the previous holder
        # published after its last save, then was killed): numbered after the counter
        await redis.run(lambda r: r.set(redis.key("ws", "seq", name(0)), 7))
        states = [PollerState(seq=5), PollerState(seq=5), PollerState(seq=0)]
        results = await asyncio.gather(
            *(commits.commit(Commit(name(i), frames(name(i), 1.0), states[i], lease))
              for i, lease in enumerate((mine, taken, free))), return_exceptions=True)
        assert results[0] is None and isinstance(results[1], LeaseLost) and results[2] is None
        assert [s.seq for s in states] == [8, 5, 1]
        got = await received(listener, 2)
        assert sorted((f.channel, f.seq) for f in got) == [(name(0), 8), (name(2), 1)]
        assert await broadcast.backend.holder(name(2)) == "me"  # a free lease is taken again
        assert await broadcast.backend.holder(name(1)) == "other"
        assert await counter(redis, name(1)) is None
        await commits.commit(Commit(name(2), frames(name(2), 2.0), states[2], free, save=False))
        assert states[2].seq == 2 and await counter(redis, name(2)) == 2
        other = await on_redis(redis)
        saved = await StateStore(other).load(name(2))
        await other.disconnect()
        assert saved is not None and saved.seq == 1  # the state of the last saved commit
        assert await StateStore(broadcast).load(name(1)) is None  # nothing saved either
        await commits.close()
    finally:
        await broadcast.disconnect()
        await listener.disconnect()


async def test_memory_backend_commits_the_same_way() -> None:
    broadcast = Broadcast(None, retry_after=1.0)
    await broadcast.connect()
    await broadcast.subscribe(BARS + name(0))
    commits = GroupCommit(StateStore(broadcast))
    state = PollerState(seq=3)
    await commits.commit(Commit(name(0), frames(name(0), 1.0, 2.0, 3.0), state,
                                Lease(broadcast, name(0), "me", 60.0)))
    assert state.seq == 6
    assert [f.seq for f in await received(broadcast, 3)] == [4, 5, 6]
    saved = await commits.store.load(name(0))
    assert saved is not None and saved.seq == 6
    assert json.loads(saved.dump())["seq"] == 6
    # a part of a catch-up but the last moves the counter and publishes, and saves no state
    await commits.commit(Commit(name(0), frames(name(0), 4.0), state, save=False))
    assert state.seq == 7 and [f.seq for f in await received(broadcast, 1)] == [7]
    shared = await broadcast.run(lambda b: b.load(StateStore.key(name(0))))
    assert shared is not None and json.loads(shared)["seq"] == 6


async def test_a_poller_whose_commit_meets_another_holder_stops(redis: RedisClient) -> None:  # noqa: F811
    broadcast = await on_redis(redis)
    hub = Hub(broadcast, no_poller, HubSettings(), "me")
    now = now_ms() // 60_000 * 60_000
    plugin = FakePlugin()
    plugin.answer = [bar(now, 1.0)]
    channel = Channel.parse("sim:sim:SIM/USD:1m")
    poller = Poller(channel, markets=FakeMarkets(plugin),  # type: ignore[arg-type]
                    out=hub, store=StateStore(broadcast), db=None,
                    settings=PollSettings(intervals={}, default_interval=0.05, revision_seconds=0.0))
    lease = Lease(broadcast, channel.name, "me", 60.0)  # renewed every 20 s: only the fence sees it
    assert await lease.acquire()
    task = asyncio.create_task(poller.run(lease))
    try:
        await wait_for(lambda: task.done() or poller.state.seq >= 1)  # the first poll published
        assert not task.done() and poller.state.seq == 1
        await redis.run(lambda r: r.set(redis.key("ws", "lease", channel.name), "other", px=60_000))
        plugin.answer = [bar(now, 1.5)]  # a change to publish: its commit meets the fence
        await asyncio.wait_for(task, 2)
        assert poller.state.seq == 1 and await broadcast.backend.holder(channel.name) == "other"
    finally:
        task.cancel()
        await hub.commits.close()
        await broadcast.disconnect()


@pytest.mark.parametrize("on", ["redis", "memory"])
async def test_leases_asked_at_once_go_in_one_round_trip(redis: RedisClient, on: str) -> None:  # noqa: F811
    broadcast = await on_redis(redis) if on == "redis" else Broadcast(None, retry_after=1.0)
    try:
        if on == "redis":
            assert await Lease(await on_redis(redis), name(3), "other", 60.0).acquire()
        sends = broadcast.hold.sends
        got = await asyncio.gather(*(Lease(broadcast, name(i), "me", 60.0).acquire()
                                     for i in range(N)))
        assert broadcast.hold.sends == sends + 1
        expected: list[Any] = [i != 3 or on == "memory" for i in range(N)]
        assert got == expected
    finally:
        await broadcast.disconnect()
