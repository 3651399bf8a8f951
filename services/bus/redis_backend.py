"""The Redis backend of the hub: pub/sub on ``<prefix>:<topic>``, leases as ``SET NX PX`` keys
renewed by a compare-and-renew script, values and counters as plain keys, and a burst of channel
commits as one script (``COMMIT_SCRIPT``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from core.errors import DataSourceError
from core.ports import RedisClient
from services.bus.backends import SEQ_TTL_SECONDS, Backend, BackendError, CommitRecord

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Per lease (KEYS[i]; ARGV[2i-1] owner, ARGV[2i] TTL ms): 1 when acquired (it was free) or
#: renewed (the owner held it), 0 when another owner holds it.
HOLD_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  local owner, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  local cur = redis.call('get', KEYS[i])
  if cur == owner then out[i] = redis.call('pexpire', KEYS[i], ttl)
  elseif not cur then out[i] = redis.call('set', KEYS[i], owner, 'PX', ttl) and 1 or 0
  else out[i] = 0 end
end
return out
"""
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
#: Per commit (KEYS: lease, seq counter, state, topic; ARGV: owner ('' = unfenced), lease TTL ms,
#: floor, frame count, state ('' = not saved), state TTL s, the frames): 0 when published; -1 when another owner
#: holds the lease; the counter when it is ahead of the floor (nothing published then).
COMMIT_SCRIPT = """
local out, a = {}, 1
for i = 1, #KEYS, 4 do
  local owner, ttl, floor, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local res = 0
  if owner ~= '' then
    local cur = redis.call('get', KEYS[i])
    if not cur then redis.call('set', KEYS[i], owner, 'PX', ttl)
    elseif cur ~= owner then res = -1 end
  end
  if res == 0 then
    local seq = tonumber(redis.call('get', KEYS[i + 1]) or '0')
    if seq > floor then
      res = seq
    else
      redis.call('set', KEYS[i + 1], floor + n, 'EX', ARGV[a + 6 + n])
      if ARGV[a + 4] ~= '' then redis.call('set', KEYS[i + 2], ARGV[a + 4], 'EX', ARGV[a + 5]) end
      for j = 1, n do redis.call('publish', KEYS[i + 3], ARGV[a + 5 + j]) end
    end
  end
  out[#out + 1] = res
  a = a + 7 + n
end
return out
"""


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

    async def hold(self, leases: list[tuple[str, str, int]]) -> list[bool]:
        keys = [self.key("ws", "lease", name) for name, _, _ in leases]
        args = [v for _, owner, ttl_ms in leases for v in (owner, ttl_ms)]
        raw = await self.redis.run(lambda r: r.eval(HOLD_SCRIPT, len(keys), *keys, *args))
        return [bool(v) for v in raw]

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

    async def commit(self, records: list[CommitRecord]) -> list[int]:
        keys: list[str] = []
        args: list[Any] = []
        for r in records:
            name, owner, ttl_ms = r.lease or ("", "", 0)
            keys += [self.key("ws", "lease", name), self.key(r.seq_key), self.key(r.state_key),
                     self.key(r.topic)]
            args += [owner, ttl_ms, r.floor, len(r.payloads), r.state, r.state_ttl, *r.payloads,
                     SEQ_TTL_SECONDS]
        if not keys:
            return []
        raw = await self.redis.run(lambda c: c.eval(COMMIT_SCRIPT, len(keys), *keys, *args))
        return [int(v) for v in raw]

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
