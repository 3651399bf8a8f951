"""Redis: one asyncio client for the app, with a short circuit-breaker when Redis is down.

``run(fn)`` executes a Redis coroutine factory retrying a transient error once (after 50 ms)
and translates redis errors to ``DataSourceError``. After a failure Redis is skipped for
``DEPENDENCY_RETRY_AFTER`` seconds, then one caller tries it again (``services.upstream.circuit``, the
breakers' one state machine): recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from quart import Quart
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import DataSourceError
from core.outage import OutageLog
from services.upstream.circuit import PROBE, REFUSED, Circuit

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
#: A transient error is retried once, after this many seconds.
RETRY_WAIT = 0.05


class RedisClient:
    """Owner of the Redis client. Reach it with ``get_redis(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.client: aioredis.Redis | None = None
        self.prefix = ""  # REDIS_PREFIX and DEPENDENCY_RETRY_AFTER, read by open()
        self.retry_after = 0.0
        #: Skips Redis for DEPENDENCY_RETRY_AFTER after a failure, then lets one caller try it
        #: (configured by open()).
        self.circuit = Circuit(threshold=1, open_seconds=2.0, probe_seconds=2.0)
        self.last_error: str | None = None
        #: Logs an outage once when it starts and once when it ends (callers log at DEBUG).
        self.outage = OutageLog(log, "Redis")
        self._config: dict[str, Any] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        app.extensions["redis"] = self
        self._config = app.config
        app.before_serving(self.open)

    async def open(self) -> None:
        cfg = self._config
        self.prefix = cfg["REDIS_PREFIX"]
        self.retry_after = float(cfg["DEPENDENCY_RETRY_AFTER"])
        # The probe after an outage may take a connect and a command (REDIS_TIMEOUT each).
        self.circuit = Circuit(threshold=1, open_seconds=self.retry_after,
                               probe_seconds=max(1.0, 3 * float(cfg["REDIS_TIMEOUT"])))
        # A blocking pool: a burst beyond REDIS_MAX_CONNECTIONS waits (up to REDIS_TIMEOUT) for a
        # free connection instead of failing, which would trip the breaker for the whole app.
        pool = aioredis.BlockingConnectionPool.from_url(
            cfg["REDIS_URL"],
            max_connections=int(cfg["REDIS_MAX_CONNECTIONS"]),
            timeout=float(cfg["REDIS_TIMEOUT"]),
            socket_timeout=cfg["REDIS_TIMEOUT"],
            socket_connect_timeout=cfg["REDIS_TIMEOUT"],
            health_check_interval=15,
        )
        self.client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        with contextlib.suppress(DataSourceError):  # logged once by self.outage
            await self.run(lambda r: r.ping())

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    @property
    def available(self) -> bool:
        return self.client is not None and self.circuit.state != "open"

    async def run(self, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)``; transient errors are retried once, then raise DataSourceError."""
        client = self.client
        code = REFUSED if client is None else self.circuit.acquire()[0]
        if client is None or code == REFUSED:
            raise DataSourceError("redis unavailable", details={"error": self.last_error})
        probe = code == PROBE
        try:
            # Two attempts by hand: a tenacity AsyncRetrying a call cost more CPU than the
            # command itself (the breaker and the budget run three a provider call).
            try:
                result = await fn(client)
            except TRANSIENT:
                await asyncio.sleep(RETRY_WAIT)
                result = await fn(client)
        except (RedisError, *TRANSIENT) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.circuit.record(probe, "fail")
            self.outage.failed(self.last_error)
            raise DataSourceError("redis unavailable", details={"error": self.last_error}) from exc
        except BaseException:
            self.circuit.record(probe, "neutral")  # cancelled: says nothing about Redis
            raise
        self.circuit.record(probe, "ok")
        self.outage.recovered()
        return result

    async def check(self) -> dict[str, Any]:
        start = time.perf_counter()
        # The circuit is left alone: while it is open this answers at once, so a flood of
        # readiness probes during an outage cannot defeat DEPENDENCY_RETRY_AFTER.
        try:
            await asyncio.wait_for(self.run(lambda r: r.ping()), timeout=1.0)
            ok, error = True, None
        except (DataSourceError, TimeoutError) as exc:
            ok, error = False, self.last_error or str(exc)
        latency = round((time.perf_counter() - start) * 1000, 2)
        return {"ok": ok, "latency_ms": latency, "error": error}

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await asyncio.wait_for(client.aclose(), timeout=float(self._config["SHUTDOWN_TIMEOUT"]))


def get_redis(app: Quart) -> RedisClient:
    client: RedisClient = app.extensions["redis"]
    return client
