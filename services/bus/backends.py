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
from dataclasses import dataclass

from redis.exceptions import RedisError

from core.errors import DataSourceError

log = logging.getLogger(__name__)
#: What a Redis backend raises when Redis fails (the Redis client, its pool, its sockets).
BackendError = (RedisError, OSError, TimeoutError, DataSourceError, ConnectionError)

#: Sequence counters outlive any gap in a channel's use (a client's last seq stays meaningful).
SEQ_TTL_SECONDS = 30 * 86_400
#: Key of a channel's sequence counter (``<prefix>:ws:seq:<channel>`` on Redis).
SEQ_KEY = "ws:seq:"


@dataclass(frozen=True)
class CommitRecord:
    """One channel's frames for ``Backend.commit``: published on ``topic`` as numbers ``floor``
    + 1... with ``state`` saved (unless empty), if the lease (name, owner, TTL ms; None: unfenced) is the owner's
    and the counter at ``seq_key`` is not beyond ``floor``."""

    topic: str
    seq_key: str
    state_key: str
    state: str
    state_ttl: int
    floor: int
    payloads: list[str]
    lease: tuple[str, str, int] | None = None


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
    async def hold(self, leases: list[tuple[str, str, int]]) -> list[bool]:
        """Per lease (name, owner, TTL ms): acquire it for the owner, or renew it; False when
        another owner holds it."""

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
    async def commit(self, records: list[CommitRecord]) -> list[int]:
        """Per record, atomically: check its lease, publish its frames, move its counter to
        ``floor`` + their count and save its state. Returns per record 0 (done), -1 (the lease is
        another owner's) or the counter when it is beyond ``floor`` (nothing done)."""

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

    async def hold(self, leases: list[tuple[str, str, int]]) -> list[bool]:
        for name, owner, _ in leases:
            self._leases[name] = owner
        return [True] * len(leases)

    async def release(self, name: str, owner: str) -> None:
        if self._leases.get(name) == owner:
            del self._leases[name]

    async def holder(self, name: str) -> str | None:
        return self._leases.get(name)

    async def load(self, key: str) -> str | None:
        return self._values.get(key)

    async def save(self, key: str, value: str, ttl: int) -> None:
        self._values[key] = value

    async def commit(self, records: list[CommitRecord]) -> list[int]:
        out = []
        for r in records:
            if r.lease is not None and self._leases.get(r.lease[0], r.lease[1]) != r.lease[1]:
                out.append(-1)
                continue
            seq = self._seqs.get(r.seq_key, 0)
            if seq > r.floor:
                out.append(seq)
                continue
            self._seqs[r.seq_key] = r.floor + len(r.payloads)
            if r.state:
                self._values[r.state_key] = r.state
            for payload in r.payloads:
                await self.publish(r.topic, payload)
            out.append(0)
        return out

    async def put_field(self, key: str, name: str, value: str, ttl: int) -> None:
        self._maps.setdefault(key, {})[name] = value

    async def fields(self, key: str) -> dict[str, str]:
        return dict(self._maps.get(key, {}))
