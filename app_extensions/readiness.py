"""What ``GET /health/ready`` answers: the dependency checks, the providers' breakers, the rate
limiter and the services' own status, and from them ``ok``, ``degraded`` or ``down``.

The dependency checks (database, Redis, the providers' breakers in Redis) are reused for
``READINESS_CACHE_SECONDS`` (probes arriving meanwhile share one run; what the process knows of
itself is read fresh each time), checks leave the dependencies' circuits alone, and their errors
are generic (``unavailable``, ``no answer within N s``): the driver's text is in the log, not in an
unauthenticated answer. Every collaborator is looked up in ``app.extensions`` when a probe
arrives, so an app without the services or the rate limiter still answers.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable
from typing import Any

from quart import Quart

from app_extensions.db_pool import Database, get_database
from app_extensions.redis_client import get_redis
from core.metrics import DB_POOL_IN_USE, DB_POOL_SIZE, DEPENDENCY_UP

#: Service objects that may expose ``status()`` for readiness: (name, extension, attribute of it).
_STATUS_SOURCES = (("websocket", "services", "subscriptions"),)

#: The database check, the Redis check and each provider's breaker state.
Checks = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


class Readiness:
    """Builds the readiness answer. Reach it with ``get_readiness(app)``."""

    def __init__(self, app: Quart) -> None:
        self.app = app
        self.at = -math.inf  # when ``answer`` was made (time.monotonic)
        self.answer: Checks = ({}, {}, {})
        self.running: asyncio.Future[Checks] | None = None  # the run making the next checks

    async def report(self) -> dict[str, Any]:
        """The answer's body: ``status`` (``down`` only when no market can be served at all),
        the storage and rate limiter modes, each check with its latency and error, and the
        services' status."""
        app = self.app
        db = get_database(app)
        services = app.extensions.get("services")
        markets = services.markets.markets() if services is not None else []
        db_check, redis_check, providers = await self.dependency_checks(
            float(app.config["READINESS_CACHE_SECONDS"]),
            sorted({p for m in markets for p in m["providers"]}))
        update_pool_gauges(db)
        checks: dict[str, Any] = {"database": dict(db_check), "redis": dict(redis_check)}
        limiter = app.extensions.get("ratelimit")
        if limiter is not None:
            checks["rate_limiter"] = limiter_status = limiter.status()
            if limiter_status.get("error"):
                limiter_status["error"] = "Redis unavailable: limiting locally"
        # The sim market serves without PostgreSQL or Redis, so their loss alone only degrades the
        # service (answers come from what is left); it is down when it has no market to serve.
        if not markets:
            status = "down"
        elif all(c.get("ok", True) for c in checks.values()):
            status = "ok"
        else:
            status = "degraded"
        body: dict[str, Any] = {
            "status": status,
            "storage_mode": db.mode,
            "rate_limiter_mode": checks.get("rate_limiter", {}).get("mode", "off"),
            "checks": {**checks, "providers": providers},
        }
        extra = await self._service_statuses()
        if extra:
            body["services"] = extra
            if isinstance(extra.get("websocket"), dict):
                body["websocket_mode"] = extra["websocket"].get("mode")
        return body

    async def dependency_checks(self, max_age: float, providers: list[str]) -> Checks:
        """The last checks when younger than ``max_age`` seconds, else a new run (shared by the
        probes arriving meanwhile)."""
        if time.monotonic() - self.at < max_age:
            return self.answer
        running = self.running
        if running is None:  # the probes arriving meanwhile share this run
            running = self.running = asyncio.ensure_future(self._run_checks(providers))
            running.add_done_callback(self._done)
        return await asyncio.shield(running)

    def _done(self, run: asyncio.Future[Checks]) -> None:
        self.running = None
        if not run.cancelled() and run.exception() is None:
            self.at, self.answer = time.monotonic(), run.result()

    async def _run_checks(self, providers: list[str]) -> Checks:
        """The database and Redis checks and the providers' breaker states, each within
        ``READINESS_TIMEOUT``."""
        db, redis = get_database(self.app), get_redis(self.app)
        timeout = float(self.app.config["READINESS_TIMEOUT"])
        db_check, redis_check, states = await asyncio.gather(
            _timed(db.check(), timeout), _timed(redis.check(), timeout),
            self._provider_states(providers, timeout))
        db_check.pop("mode", None)
        for name, check in (("database", db_check), ("redis", redis_check)):
            DEPENDENCY_UP.labels(name).set(1 if check["ok"] else 0)
        return db_check, redis_check, states

    async def _provider_states(self, providers: list[str], limit: float) -> dict[str, dict[str, str]]:
        """Each provider's circuit breaker (``closed``, ``open``, ``half_open``): from Redis, or this
        instance's own view when Redis is down or slower than ``limit``. An open breaker does not
        change ``status``: the instance still answers from stored data, and no other would do better."""
        owner = self.app.extensions.get("services")
        if owner is None:
            return {}
        try:
            states = await asyncio.wait_for(owner.breaker.states(providers), timeout=limit)
        except TimeoutError:
            states = owner.breaker.local_states(providers)
        return {p: {"state": state} for p, state in states.items()}

    async def _service_statuses(self) -> dict[str, Any]:
        """``status()`` of the optional services that are present (e.g. the WebSocket service)."""
        out: dict[str, Any] = {}
        for name, extension, attribute in _STATUS_SOURCES:
            owner = self.app.extensions.get(extension)
            status = getattr(getattr(owner, attribute, None), "status", None)
            if callable(status):
                value = status()
                out[name] = await value if inspect.isawaitable(value) else value
        return out


async def _timed(check: Awaitable[dict[str, Any]], limit: float) -> dict[str, Any]:
    """Run one check for at most ``limit`` seconds; a timeout reads as not ok with the time it took.
    A failure's error is generic (the check's own text may hold driver details)."""
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(check, timeout=limit)
    except TimeoutError:
        return {"ok": False, "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                "error": f"no answer within {limit:g} s"}
    if result.get("error"):
        result["error"] = "unavailable"
    return result


def update_pool_gauges(db: Database) -> None:
    """Set the pool size and in-use gauges from the pool (0 while there is none)."""
    pool = db.pool
    size = pool.get_size() if pool is not None else 0
    idle = pool.get_idle_size() if pool is not None else 0
    DB_POOL_SIZE.set(size)
    DB_POOL_IN_USE.set(max(0, size - idle))


def get_readiness(app: Quart) -> Readiness:
    """The app's ``Readiness``, made on first use."""
    readiness: Readiness | None = app.extensions.get("readiness")
    if readiness is None:
        readiness = app.extensions["readiness"] = Readiness(app)
    return readiness
