"""What the hub needs from a cluster, behind one small base class (encode/broadcaster's shape):
pub/sub of text messages by topic, poller leases, and shared values (channel state, sequence
counters). ``RedisBackend`` shares them across instances; ``MemoryBackend`` keeps them in this
process (every instance then polls and delivers its own channels).

A backend raises ``BackendError`` when it fails; ``Broadcast`` then swaps to memory.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from core.errors import DataSourceError
from core.ports import RedisClient

T = TypeVar("T")

log = logging.getLogger(__name__)
#: What a Redis backend raises when Redis fails (the Redis client, its pool, its sockets).
BackendError = (RedisError, OSError, TimeoutError, DataSourceError, ConnectionError)

#: Acquire the lease when it is free, or renew it when we hold it.
HOLD_SCRIPT = """
local cur = redis.call('get', KEYS[1])
if cur == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not cur then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0 end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
#: Reserve ARGV[1] numbers after max(stored, ARGV[2]); returns the last one.
SEQ_SCRIPT = """
local cur = tonumber(redis.call('get', KEYS[1]) or '0')
local floor = tonumber(ARGV[2])
if cur < floor then cur = floor end
cur = cur + tonumber(ARGV[1])
redis.call('set', KEYS[1], cur, 'EX', ARGV[3])
return cur
"""
#: Sequence counters outlive any gap in a channel's use (a client's last seq stays meaningful).
SEQ_TTL_SECONDS = 30 * 86_400


class Backend(ABC):
    """One cluster transport. ``name`` is what readiness reports as the WebSocket mode."""

    name: str

    @abstractmethod
    async def connect(self) -> None:
        """Open the transport; raises ``BackendError``."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Close the transport (never raises)."""

    @abstractmethod
    async def subscribe(self, topics: list[str]) -> None:
        """Receive messages published on ``topics``."""

    @abstractmethod
    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``."""

    @abstractmethod
    async def publish(self, topic: str, payload: str) -> None:
        """Send ``payload`` to every subscriber of ``topic``."""

    @abstractmethod
    async def next_published(self) -> tuple[str, str]:
        """Wait for the next message: ``(topic, payload)``."""

    @abstractmethod
    async def hold(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Acquire lease ``name`` for ``owner``, or renew it; False when another owner holds it."""

    @abstractmethod
    async def release(self, name: str, owner: str) -> None:
        """Give lease ``name`` up if ``owner`` holds it."""

    @abstractmethod
    async def holder(self, name: str) -> str | None:
        """The owner of lease ``name``, if any."""

    @abstractmethod
    async def load(self, key: str) -> str | None:
        """A shared value."""

    @abstractmethod
    async def save(self, key: str, value: str, ttl: int) -> None:
        """Set a shared value for ``ttl`` seconds."""

    @abstractmethod
    async def next_seq(self, key: str, count: int, floor: int) -> int:
        """Reserve ``count`` numbers after max(the counter, ``floor``); returns the last one."""

    @abstractmethod
    async def put_field(self, key: str, name: str, value: str, ttl: int) -> None:
        """Set field ``name`` of the shared map ``key`` (the map lives ``ttl`` s after a write)."""

    @abstractmethod
    async def fields(self, key: str) -> dict[str, str]:
        """Every field of the shared map ``key``."""


class MemoryBackend(Backend):
    """Everything in this process: every lease is granted, every message delivered locally."""

    name = "memory"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._topics: set[str] = set()
        self._values: dict[str, str] = {}
        self._seqs: dict[str, int] = {}
        self._leases: dict[str, str] = {}
        self._maps: dict[str, dict[str, str]] = {}

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        while not self._queue.empty():  # frames of the memory period are not replayed later
            self._queue.get_nowait()

    async def subscribe(self, topics: list[str]) -> None:
        self._topics.update(topics)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)

    async def publish(self, topic: str, payload: str) -> None:
        if topic in self._topics:
            self._queue.put_nowait((topic, payload))

    async def next_published(self) -> tuple[str, str]:
        return await self._queue.get()

    async def hold(self, name: str, owner: str, ttl_ms: int) -> bool:
        self._leases[name] = owner
        return True

    async def release(self, name: str, owner: str) -> None:
        if self._leases.get(name) == owner:
            del self._leases[name]

    async def holder(self, name: str) -> str | None:
        return self._leases.get(name)

    async def load(self, key: str) -> str | None:
        return self._values.get(key)

    async def save(self, key: str, value: str, ttl: int) -> None:
        self._values[key] = value

    async def next_seq(self, key: str, count: int, floor: int) -> int:
        self._seqs[key] = max(self._seqs.get(key, 0), floor) + count
        return self._seqs[key]

    async def put_field(self, key: str, name: str, value: str, ttl: int) -> None:
        self._maps.setdefault(key, {})[name] = value

    async def fields(self, key: str) -> dict[str, str]:
        return dict(self._maps.get(key, {}))


class RedisBackend(Backend):
    """Redis pub/sub on ``<prefix>:<topic>``, leases as ``SET NX PX`` keys renewed by a
    compare-and-renew script, values and counters as plain keys."""

    name = "redis"

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._pubsub: Any = None
        #: Pub/sub commands still running after their caller was cancelled (see ``_guarded``).
        self._orphans: set[asyncio.Task[Any]] = set()

    async def _guarded(self, coro: Awaitable[T]) -> T:
        """Run a pub/sub command as its own task: redis-py's SUBSCRIBE can swallow a cancellation
        of its caller (a WebSocket reader being stopped then never ends); this way the caller's
        cancellation always propagates, and the command finishes by itself."""
        task = asyncio.ensure_future(coro)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._orphans.add(task)
            task.add_done_callback(self._forget)
            raise

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._orphans.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a pub/sub command of a cancelled caller failed: %s", task.exception())

    def key(self, *parts: str) -> str:
        return self.redis.key(*parts)

    async def connect(self) -> None:
        client = self.redis.client
        if client is None:
            raise DataSourceError("redis not open")
        await self.disconnect()
        await self.redis.run(lambda r: r.ping())  # commands answer too (not only pub/sub)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.key("ws", "__instance__"))
        self._pubsub = pubsub

    async def disconnect(self) -> None:
        for task in list(self._orphans):
            task.cancel()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await asyncio.wait_for(pubsub.aclose(), timeout=1.0)
            except BackendError as exc:
                log.debug("closing pub/sub: %s", exc)

    def _live_pubsub(self) -> Any:
        if self._pubsub is None:
            raise DataSourceError("redis pub/sub is not connected")
        return self._pubsub

    async def subscribe(self, topics: list[str]) -> None:
        if topics:
            await self._guarded(self._live_pubsub().subscribe(*[self.key(t) for t in topics]))

    async def unsubscribe(self, topic: str) -> None:
        await self._guarded(self._live_pubsub().unsubscribe(self.key(topic)))

    async def publish(self, topic: str, payload: str) -> None:
        key = self.key(topic)
        await self.redis.run(lambda r: r.publish(key, payload))

    async def next_published(self) -> tuple[str, str]:
        skip = len(self.key(""))
        while True:
            msg = await self._live_pubsub().get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg is not None and msg.get("type") == "message":
                data = msg["data"]
                return msg["channel"].decode()[skip:], data.decode() if isinstance(data, bytes) else data

    async def hold(self, name: str, owner: str, ttl_ms: int) -> bool:
        key = self.key("ws", "lease", name)
        return bool(await self.redis.run(lambda r: r.eval(HOLD_SCRIPT, 1, key, owner, ttl_ms)))

    async def release(self, name: str, owner: str) -> None:
        key = self.key("ws", "lease", name)
        await self.redis.run(lambda r: r.eval(RELEASE_SCRIPT, 1, key, owner))

    async def holder(self, name: str) -> str | None:
        key = self.key("ws", "lease", name)
        raw = await self.redis.run(lambda r: r.get(key))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def load(self, key: str) -> str | None:
        full = self.key(key)
        raw = await self.redis.run(lambda r: r.get(full))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def save(self, key: str, value: str, ttl: int) -> None:
        full = self.key(key)
        await self.redis.run(lambda r: r.set(full, value, ex=ttl))

    async def next_seq(self, key: str, count: int, floor: int) -> int:
        full = self.key(key)
        return int(await self.redis.run(
            lambda r: r.eval(SEQ_SCRIPT, 1, full, count, floor, SEQ_TTL_SECONDS)))

    async def put_field(self, key: str, name: str, value: str, ttl: int) -> None:
        full = self.key(key)

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.hset(full, name, value)
                pipe.expire(full, ttl)
                await pipe.execute()
        await self.redis.run(write)

    async def fields(self, key: str) -> dict[str, str]:
        full = self.key(key)
        raw = await self.redis.run(lambda r: r.hgetall(full))
        return {(k.decode() if isinstance(k, bytes) else str(k)):
                (v.decode() if isinstance(v, bytes) else str(v)) for k, v in raw.items()}
