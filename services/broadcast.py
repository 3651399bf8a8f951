"""Cluster coordination of live channels: fan-out (BroadcastManager) and poller leases
(SubscriptionRegistry), each with a Redis mode and an in-memory mode.

- ``BroadcastManager`` delivers frames published on a channel to this instance's handler. With
  Redis, a frame is PUBLISHed and every instance SUBSCRIBEd to the channel (those with local
  subscribers) hands it to its own clients. Without Redis (never configured, or down), delivery is
  local only; a reader task reconnects by itself and the instance rejoins the cluster.
- ``SubscriptionRegistry`` makes one instance in the cluster poll a channel: a lease key set with
  ``SET NX PX`` and renewed every third of its TTL by its holder with a compare-and-renew script.
  When the holder dies its lease expires and the next instance with subscribers takes it over. In
  memory mode every instance polls its own channels (split brain is preferred to no data).

Frames travel as one pre-encoded text ``"<t_poll>|<ts>|<frame json>"``: encoded once per publish,
never per client. ``ts`` is the bar's open time (-1 for frames without one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from core.errors import DataSourceError
from core.metrics import WS_CLUSTER_MODE
from core.ports import RedisClient

log = logging.getLogger(__name__)

#: handler(channel, ts, t_poll, frame_text) called for every frame this instance receives.
FrameHandler = Callable[[str, int, float, str], None]
ChannelCallback = Callable[[str], Awaitable[None]]
REDIS_ERRORS = (RedisError, OSError, TimeoutError, DataSourceError)

RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended (also from a ``finally`` of a cancelled
    caller); a new cancellation of the caller while waiting propagates."""
    tries = 0
    while not task.done():  # again if a library swallowed the first cancellation
        if tries:
            log.warning("task %s survived a cancellation; cancelling it again", task.get_name())
        task.cancel()
        tries += 1
        await asyncio.wait([task], timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


def encode_envelope(ts: int, t_poll: float, frame: dict[str, Any]) -> str:
    return f"{t_poll!r}|{ts}|{json.dumps(frame, separators=(',', ':'))}"


def decode_envelope(payload: str) -> tuple[int, float, str]:
    t_poll, ts, text = payload.split("|", 2)
    return int(ts), float(t_poll), text


class BroadcastManager:
    """Pub/sub fan-out of frames across instances (Redis) or within this one (memory)."""

    def __init__(self, redis: RedisClient | None, *, retry_after: float = 2.0) -> None:
        self.redis = redis
        self.retry_after = retry_after
        self.channels: set[str] = set()
        self._handler: FrameHandler | None = None
        self._pubsub: Any = None
        self._connected = False
        self._task: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        """``redis`` while frames go through Redis pub/sub, else ``memory``."""
        return "redis" if self._connected else "memory"

    def set_handler(self, handler: FrameHandler) -> None:
        """The callable every received frame is handed to (set once by SubscriptionService)."""
        self._handler = handler

    def _key(self, channel: str) -> str:
        assert self.redis is not None
        return self.redis.key("ws", "bars", channel)

    async def start(self) -> None:
        """Start the Redis reader (no-op without Redis)."""
        if self.redis is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="ws-broadcast-reader")

    async def close(self) -> None:
        """Stop the reader and drop the pub/sub connection."""
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)
        await self._drop()

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel``'s frames on this instance."""
        self.channels.add(channel)
        if self._connected:
            try:
                await self._pubsub.subscribe(self._key(channel))
            except REDIS_ERRORS as exc:
                self._lost(exc)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s frames."""
        self.channels.discard(channel)
        if self._connected:
            try:
                await self._pubsub.unsubscribe(self._key(channel))
            except REDIS_ERRORS as exc:
                self._lost(exc)

    async def publish(self, channel: str, frame: dict[str, Any], ts: int = -1,
                      t_poll: float | None = None) -> None:
        """Deliver ``frame`` to every instance's subscribers of ``channel``."""
        payload = encode_envelope(ts, time.time() if t_poll is None else t_poll, frame)
        if self._connected and self.redis is not None:
            key = self._key(channel)
            try:
                await self.redis.run(lambda r: r.publish(key, payload))
                return
            except DataSourceError as exc:
                self._lost(exc)
        self._deliver(channel, payload)

    def _deliver(self, channel: str, payload: str) -> None:
        if self._handler is not None and channel in self.channels:
            try:
                ts, t_poll, text = decode_envelope(payload)
            except ValueError:  # not ours (another publisher): drop it, keep the subscription
                log.warning("message on %s is not a frame envelope; dropped", channel)
                return
            self._handler(channel, ts, t_poll, text)

    def _lost(self, exc: BaseException) -> None:
        if self._connected:
            log.warning("Redis pub/sub lost, delivering in memory: %s", exc)
        self._connected = False
        WS_CLUSTER_MODE.set(0)

    async def _drop(self) -> None:
        pubsub, self._pubsub, self._connected = self._pubsub, None, False
        WS_CLUSTER_MODE.set(0)
        if pubsub is not None:
            try:
                await asyncio.wait_for(pubsub.aclose(), timeout=1.0)
            except REDIS_ERRORS as exc:
                log.debug("closing pub/sub: %s", exc)

    async def _connect(self) -> None:
        assert self.redis is not None
        client = self.redis.client
        if client is None:
            raise DataSourceError("redis not open")
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub = pubsub
        await pubsub.subscribe(self._key("__instance__"))
        if self.channels:
            await pubsub.subscribe(*[self._key(c) for c in self.channels])
        self._connected = True
        WS_CLUSTER_MODE.set(1)
        log.info("Redis pub/sub connected (%d channels)", len(self.channels))

    async def _run(self) -> None:
        prefix = len(self._key(""))
        while True:
            try:
                await self._connect()
                while self._connected:
                    msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if msg is not None and msg.get("type") == "message":
                        channel = msg["channel"].decode()[prefix:]
                        self._deliver(channel, msg["data"].decode())
            except REDIS_ERRORS as exc:
                self._lost(exc)
            except Exception as exc:  # a bug must not end fan-out: log, reconnect, back off
                log.error("broadcast reader failed", exc_info=exc)
                self._lost(exc)
            await self._drop()
            await asyncio.sleep(self.retry_after)


class SubscriptionRegistry:
    """Which channels this instance polls: Redis leases, or every local channel in memory mode."""

    def __init__(self, redis: RedisClient | None, broadcast: BroadcastManager, *, ttl: float,
                 instance_id: str) -> None:
        self.redis = redis
        self.broadcast = broadcast
        self.ttl_ms = int(ttl * 1000)
        self.instance_id = instance_id
        self.channels: set[str] = set()
        self.polling: set[str] = set()
        self._leased: set[str] = set()
        self._lock = asyncio.Lock()
        self.on_gain: ChannelCallback | None = None
        self.on_loss: ChannelCallback | None = None
        self.mode = "memory"

    def _key(self, channel: str) -> str:
        assert self.redis is not None
        return self.redis.key("ws", "lease", channel)

    async def holder(self, channel: str) -> str | None:
        """The instance id holding ``channel``'s lease (None without one or without Redis)."""
        if self.redis is None:
            return None
        raw = await self.redis.run(lambda r: r.get(self._key(channel)))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def add(self, channel: str) -> None:
        """Contend for ``channel`` now (the first local subscriber arrived)."""
        self.channels.add(channel)
        await self._tick(channel)

    async def remove(self, channel: str) -> None:
        """Stop polling ``channel`` here and release its lease (its last subscriber left)."""
        self.channels.discard(channel)
        async with self._lock:
            await self._stop(channel)
            await self._release(channel)

    async def run(self) -> None:
        """Renew or acquire every local channel's lease each third of the TTL, until cancelled."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            for channel in list(self.channels):
                try:
                    await self._tick(channel)
                except Exception as exc:  # a bug must not stop the renewals: log and go on
                    log.error("lease tick of %s failed", channel, exc_info=exc)

    async def close(self) -> None:
        """Stop every poller and release the leases (an orderly shutdown hands over at once)."""
        for channel in list(self.polling | self._leased):
            async with self._lock:
                await self._stop(channel)
                await self._release(channel)
        self.channels.clear()

    async def _tick(self, channel: str) -> None:
        async with self._lock:
            if channel not in self.channels:
                return
            if self.redis is None or self.broadcast.mode != "redis":
                self.mode = "memory"
                await self._start(channel)
                return
            try:
                held = await self._acquire_or_renew(channel)
            except DataSourceError as exc:
                log.warning("lease of %s unavailable, polling locally: %s", channel, exc.details)
                self.mode = "memory"
                await self._start(channel)
                return
            self.mode = "redis"
            if held:
                await self._start(channel)
            else:
                await self._stop(channel)

    async def _acquire_or_renew(self, channel: str) -> bool:
        assert self.redis is not None
        key, me, ttl = self._key(channel), self.instance_id, self.ttl_ms
        if channel in self._leased:
            renewed = await self.redis.run(lambda r: r.eval(RENEW_SCRIPT, 1, key, me, ttl))
            if renewed:
                return True
            self._leased.discard(channel)
        got = await self.redis.run(lambda r: r.set(key, me, nx=True, px=ttl))
        if got:
            self._leased.add(channel)
        return bool(got)

    async def _release(self, channel: str) -> None:
        if channel not in self._leased or self.redis is None:
            return
        self._leased.discard(channel)
        key, me = self._key(channel), self.instance_id
        try:
            await self.redis.run(lambda r: r.eval(RELEASE_SCRIPT, 1, key, me))
        except DataSourceError as exc:
            log.warning("releasing lease of %s failed (it expires by itself): %s", channel, exc)

    async def _start(self, channel: str) -> None:
        if channel not in self.polling:
            self.polling.add(channel)
            if self.on_gain is not None:
                await self.on_gain(channel)

    async def _stop(self, channel: str) -> None:
        if channel in self.polling:
            self.polling.discard(channel)
            if self.on_loss is not None:
                await self.on_loss(channel)
