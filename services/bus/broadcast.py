"""Broadcast: the hub's cluster transport, swapping backends instead of branching on a flag.

It runs every operation on the current backend. When the Redis backend fails, it swaps to the
memory backend and goes on there (every instance then polls and delivers its own channels:
split brain is preferred to no data); the reader tries Redis again every ``retry_after`` seconds
and swaps back when it answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from core.metrics import WS_CLUSTER_MODE
from services.bus.backends import Backend, BackendError, MemoryBackend
from services.bus.batch import CallBatcher

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class Broadcast:
    """The current backend: ``primary`` (Redis) while it answers, else memory."""

    def __init__(self, primary: Backend | None, *, retry_after: float) -> None:
        self.primary = primary
        self.fallback: Backend = MemoryBackend()
        self.backend: Backend = self.fallback
        self.retry_after = retry_after
        #: Topics subscribed (re-subscribed on the primary when it comes back).
        self.topics: set[str] = set()
        self._swap = asyncio.Lock()
        #: Loop time of the next attempt to swap back to the primary.
        self._retry_at = 0.0
        #: Lease acquisitions and renewals: those asked at once go in one round trip (the leases
        #: of channels started together come due together).
        self.hold = CallBatcher(self._hold, "ws-leases")

    @property
    def mode(self) -> str:
        """``redis`` while messages go through Redis, else ``memory``."""
        return self.backend.name

    async def connect(self) -> None:
        """Start on the primary when it answers, else on memory."""
        await self.fallback.connect()
        await self._try_primary()

    async def disconnect(self) -> None:
        await self.hold.close()
        self.backend = self.fallback
        WS_CLUSTER_MODE.set(0)
        if self.primary is not None:
            await self.primary.disconnect()
        await self.fallback.disconnect()

    async def _try_primary(self) -> bool:
        primary = self.primary
        if primary is None:
            return False
        async with self._swap:
            if self.backend is primary:
                return True
            try:
                await primary.connect()
                await primary.subscribe(sorted(self.topics))
            except BackendError as exc:
                log.debug("cluster backend still unavailable: %s", exc)
                await primary.disconnect()
                return False
            self.backend = primary
            await self.fallback.disconnect()
        WS_CLUSTER_MODE.set(1)
        log.info("cluster backend %s connected (%d topics)", primary.name, len(self.topics))
        return True

    async def _failed(self, backend: Backend, exc: BaseException) -> None:
        async with self._swap:
            if self.backend is not backend:
                return
            log.warning("cluster backend %s lost, working in memory: %s", backend.name, exc)
            self.backend = self.fallback
            await self.fallback.subscribe(sorted(self.topics))
        WS_CLUSTER_MODE.set(0)
        await backend.disconnect()

    async def run(self, op: Callable[[Backend], Awaitable[T]]) -> T:
        """``op`` on the current backend; on a failure of the primary, swap and run it on memory."""
        backend = self.backend
        if backend is self.fallback:
            return await op(backend)
        try:
            return await op(backend)
        except BackendError as exc:
            await self._failed(backend, exc)
            return await op(self.fallback)

    async def subscribe(self, topic: str) -> None:
        """Receive ``topic`` here, on the current backend and on memory (ready for a swap)."""
        self.topics.add(topic)
        await self.fallback.subscribe([topic])
        await self.run(lambda b: b.subscribe([topic]))

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``."""
        self.topics.discard(topic)
        await self.fallback.unsubscribe(topic)
        await self.run(lambda b: b.unsubscribe(topic))

    async def publish(self, topic: str, payload: str) -> None:
        await self.run(lambda b: b.publish(topic, payload))

    async def _hold(self, leases: list[tuple[str, str, int]]) -> list[bool]:
        return await self.run(lambda b: b.hold(leases))

    async def next_published(self) -> tuple[str, str]:
        """The next message from the current backend (never raises a backend failure)."""
        loop = asyncio.get_running_loop()
        while True:
            backend = self.backend
            if backend is self.fallback:
                if self.primary is None:
                    return await backend.next_published()
                if loop.time() >= self._retry_at:
                    self._retry_at = loop.time() + self.retry_after
                    await self._try_primary()
                    continue
                try:  # a local message, or time to try the primary again
                    return await asyncio.wait_for(backend.next_published(),
                                                  self._retry_at - loop.time())
                except TimeoutError:
                    continue
            try:
                return await backend.next_published()
            except BackendError as exc:
                await self._failed(backend, exc)


class LeaseLost(Exception):
    """Another instance holds the channel's lease: this poller must stop (nothing was published)."""


class Lease:
    """One channel's poller lease for ``owner``: held while renewed every third of ``ttl``."""

    def __init__(self, broadcast: Broadcast, name: str, owner: str, ttl: float) -> None:
        self.broadcast, self.name, self.owner = broadcast, name, owner
        self.ttl_ms = int(ttl * 1000)

    async def acquire(self) -> bool:
        """Take (or renew) the lease; False while another instance holds it."""
        return await self.broadcast.hold((self.name, self.owner, self.ttl_ms))

    async def keep(self) -> None:
        """Renew the lease every third of its TTL; returns when it has been lost."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            if not await self.acquire():
                return

    async def release(self) -> None:
        """Give the lease up if still held (an orderly stop hands the channel over at once)."""
        await self.broadcast.run(lambda b: b.release(self.name, self.owner))

    async def run(self, work: Coroutine[Any, Any, None], channel: str) -> None:
        """Run ``work`` (the poll loop of ``channel``) under the lease, renewing it, until the
        lease is lost (a renewal fails, or ``work`` raises ``LeaseLost``); then stop ``work`` and
        release the lease. Any other error of ``work`` is raised."""
        polls = asyncio.create_task(work, name=f"ws-poll-{channel}")
        keeper = asyncio.create_task(self.keep(), name=f"ws-lease-keep-{channel}")
        try:
            await asyncio.wait({polls, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if not polls.done():
                log.info("lease of %s lost: its poller stops", channel)
                keeper.result()
            elif isinstance(polls.exception(), LeaseLost):
                log.info("lease of %s is another instance's: its poller stops", channel)
            else:
                polls.result()  # a bug: raised to the hub, which logs it
        finally:
            for task in (polls, keeper):
                if not task.done():
                    await stop_task(task)
            await self.release()
