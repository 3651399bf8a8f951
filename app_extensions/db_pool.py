"""PostgreSQL: the asyncpg pool, versioned migrations and the storage mode.

``Database`` is an extension object: ``__init__`` does no I/O, ``init_app`` registers it and its
``before_serving``/``after_serving`` hooks. When PostgreSQL cannot be reached the service still
starts; ``acquire()`` raises ``DataSourceError`` and the pool is created (and migrations applied)
by the first ``acquire()`` after ``DEPENDENCY_RETRY_AFTER`` seconds once PostgreSQL is back. The
skip-then-retry is ``services.upstream.circuit``'s state machine (the breakers' one): after a failure
PostgreSQL is skipped for that time, then one caller tries it while the others keep degrading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from quart import Quart

from app_extensions.migrations import run_migrations
from core.errors import DataSourceError
from core.outage import OutageLog
from services.bars.aggregates import describe_mode
from services.upstream.circuit import PROBE, REFUSED, Circuit

log = logging.getLogger(__name__)

#: Errors that mean "the database is unreachable or broke the connection", not a bug in our SQL.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


class Database:
    """Owner of the asyncpg pool. Reach it with ``get_database(app)``."""

    def __init__(self, app: Quart | None = None) -> None:
        self.pool: asyncpg.Pool | None = None
        self.mode: str = "unknown"
        self.config: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        #: Skips PostgreSQL for DEPENDENCY_RETRY_AFTER after a failure, then lets one caller try
        #: it (configured by init_app).
        self.circuit = Circuit(threshold=1, open_seconds=2.0, probe_seconds=13.0)
        self.last_error: str | None = None
        #: Logs an outage once when it starts and once when it ends (callers log at DEBUG).
        self.outage = OutageLog(log, "PostgreSQL")
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        app.extensions["database"] = self
        self.config = app.config
        # A probe may connect and migrate: a connect timeout and a statement's time at most.
        self.circuit = Circuit(threshold=1, open_seconds=float(app.config["DEPENDENCY_RETRY_AFTER"]),
                               probe_seconds=float(app.config["DB_CONNECT_TIMEOUT"])
                               + float(app.config["DB_COMMAND_TIMEOUT"]))
        app.before_serving(self.open)

    async def open(self) -> None:
        """Create the pool and migrate; on failure log and stay down (degraded)."""
        with contextlib.suppress(DataSourceError):  # logged once by self.outage
            await self._connect()

    async def _connect(self) -> asyncpg.Pool:
        async with self._lock:
            if self.pool is not None:
                return self.pool
            code = self.circuit.acquire()[0]
            if code == REFUSED:
                raise DataSourceError("database unavailable", details={"error": self.last_error})
            probe = code == PROBE
            cfg = self.config
            schema = cfg["DATABASE_SCHEMA"]
            try:
                pool = await asyncpg.create_pool(
                    cfg["DATABASE_URL"],
                    min_size=cfg["DB_POOL_MIN"],
                    max_size=cfg["DB_POOL_MAX"],
                    command_timeout=cfg["DB_COMMAND_TIMEOUT"],
                    timeout=cfg["DB_CONNECT_TIMEOUT"],
                    # Startup parameters, sent once per connection; the RESET ALL that asyncpg
                    # runs when a connection goes back to the pool returns to them.
                    server_settings={"search_path": f"{schema},public", "timezone": "UTC"},
                )
                try:
                    async with pool.acquire() as conn:
                        self.mode = await run_migrations(conn, cfg)
                except BaseException:
                    await pool.close()
                    raise
            except BaseException as exc:
                raise self._failed(exc, probe)  # noqa: B904 (_failed sets the cause)
            self.circuit.record(probe, "ok")
            self.outage.recovered()
            log.info("storage mode: %s (schema %s): %s", self.mode, schema, describe_mode(self.mode))
            self.pool = pool
            self.last_error = None
            return pool

    def _mark_down(self, exc: BaseException, probe: bool) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.circuit.record(probe, "fail")
        self.outage.failed(self.last_error)

    def _failed(self, exc: BaseException, probe: bool) -> BaseException:
        """Record an attempt that raised ``exc`` (a failure when PostgreSQL is unreachable, else
        neutral) and return what to raise: ``DataSourceError`` caused by ``exc``, or ``exc``."""
        if not isinstance(exc, DB_UNAVAILABLE):
            self.circuit.record(probe, "neutral")
            return exc
        self._mark_down(exc, probe)
        error = DataSourceError("database unavailable", details={"error": str(exc)})
        error.__cause__ = exc
        return error

    @property
    def available(self) -> bool:
        return self.pool is not None and self.circuit.state != "open"

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; unavailability is raised as ``DataSourceError``."""
        pool = self.pool if self.pool is not None else await self._connect()
        code = self.circuit.acquire()[0]
        if code == REFUSED:
            raise DataSourceError("database unavailable", details={"error": self.last_error})
        probe = code == PROBE
        try:
            async with pool.acquire() as conn:
                if probe:  # a connection answered: PostgreSQL is back
                    self.circuit.record(True, "ok")
                    probe = False
                if self.outage.down:
                    self.outage.recovered()
                yield conn
        except BaseException as exc:
            raise self._failed(exc, probe)  # noqa: B904 (_failed sets the cause)

    async def check(self) -> dict[str, Any]:
        """Readiness probe: ``{"ok", "latency_ms", "error"}`` with a short timeout."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(1.0):
                async with self.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            ok, error = True, None
        except TimeoutError:
            ok, error = False, "timed out after 1.0 s"
        except DataSourceError:
            ok, error = False, self.last_error
        return {
            "ok": ok,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2),
            "error": error,
            "mode": self.mode,
        }

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=float(self.config["SHUTDOWN_TIMEOUT"]))
        except (TimeoutError, asyncio.CancelledError):
            pool.terminate()
            raise


def get_database(app: Quart) -> Database:
    db: Database = app.extensions["database"]
    return db
