"""What services need from PostgreSQL and Redis, as ``Protocol``s.

Services accept these instead of the extension objects that own the connections
(``app_extensions.db_pool.Database`` and ``app_extensions.redis_client.RedisClient`` implement
them), so ``services`` never import ``app_extensions`` and a test may hand in any object of the
same shape. Like the rest of ``core`` they import no driver: the connection and the client they
hand out are typed ``Any`` (an ``asyncpg.Connection`` and a ``redis.asyncio.Redis``; asyncpg ships
no type hints, so mypy saw ``Any`` there already).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Database(Protocol):
    """A pooled PostgreSQL connection source."""

    #: Storage mode chosen by the migrations (``services.bars.aggregates.MODES``), or ``"unknown"``.
    mode: str

    @property
    def available(self) -> bool:
        """False while the database is known to be down (callers skip it instead of waiting)."""
        ...

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        """A pooled connection (an ``asyncpg.Connection``); unavailability raises
        ``core.errors.DataSourceError``."""
        ...


class RedisClient(Protocol):
    """One Redis client with namespaced keys and a short circuit-breaker."""

    #: The underlying ``redis.asyncio.Redis`` (None before start-up); pub/sub needs it directly.
    client: Any

    @property
    def available(self) -> bool:
        """False while Redis is known to be down."""
        ...

    def key(self, *parts: object) -> str:
        """``parts`` joined under this app's key prefix."""
        ...

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` (``client`` a ``redis.asyncio.Redis``); Redis errors raise
        ``core.errors.DataSourceError``."""
        ...


__all__ = ["Database", "RedisClient"]
