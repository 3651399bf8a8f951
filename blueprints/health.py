"""Liveness, readiness and the Prometheus scrape endpoint.

The dependency checks (database, Redis, the providers' breakers in Redis) are reused for
``READINESS_CACHE_SECONDS`` (probes arriving meanwhile share one run; what the process knows of
itself is read fresh each time), checks leave the dependencies' circuits alone, and their errors
are generic (``unavailable``, ``no answer within N s``): the driver's text is in the log, not in an
unauthenticated answer.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from collections.abc import Awaitable
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from quart import Blueprint, Quart, Request, Response, current_app, jsonify
from quart.blueprints import BlueprintSetupState

from app_extensions.db_pool import Database, get_database
from app_extensions.hooks import get_hooks
from app_extensions.redis_client import get_redis
from core.metrics import DB_POOL_IN_USE, DB_POOL_SIZE, DEPENDENCY_UP

health_blueprint = Blueprint("health", __name__)

#: Service objects that may expose ``status()`` for readiness: (name, extension, attribute of it).
_STATUS_SOURCES = (("websocket", "services", "subscriptions"),)


@health_blueprint.get("/health")
async def health() -> Response:
    return jsonify({"status": "ok"})


#: app.extensions key of the readiness answers (``_ReadyAnswers``).
_READY_CACHE = "health.ready"


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


async def _service_statuses() -> dict[str, Any]:
    """``status()`` of the optional services that are present (e.g. the WebSocket service)."""
    out: dict[str, Any] = {}
    for name, extension, attribute in _STATUS_SOURCES:
        owner = current_app.extensions.get(extension)
        status = getattr(getattr(owner, attribute, None), "status", None)
        if callable(status):
            value = status()
            out[name] = await value if inspect.isawaitable(value) else value
    return out


async def _provider_states(providers: list[str], limit: float) -> dict[str, dict[str, str]]:
    """Each provider's circuit breaker (``closed``, ``open``, ``half_open``): from Redis, or this
    instance's own view when Redis is down or slower than ``limit``. An open breaker does not
    change ``status``: the instance still answers from stored data, and no other would do better."""
    owner = current_app.extensions.get("services")
    if owner is None:
        return {}
    try:
        states = await asyncio.wait_for(owner.breaker.states(providers), timeout=limit)
    except TimeoutError:
        states = owner.breaker.local_states(providers)
    return {p: {"state": state} for p, state in states.items()}


Checks = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


class _ReadyAnswers:
    """The last dependency checks and their time, and the run that makes the next ones."""

    def __init__(self) -> None:
        self.at = -math.inf
        self.answer: Checks = ({}, {}, {})
        self.running: asyncio.Future[Checks] | None = None

    async def get(self, max_age: float, providers: list[str]) -> Checks:
        if time.monotonic() - self.at < max_age:
            return self.answer
        running = self.running
        if running is None:  # the probes arriving meanwhile share this run
            running = self.running = asyncio.ensure_future(_dependency_checks(providers))
            running.add_done_callback(self._done)
        return await asyncio.shield(running)

    def _done(self, run: asyncio.Future[Checks]) -> None:
        self.running = None
        if not run.cancelled() and run.exception() is None:
            self.at, self.answer = time.monotonic(), run.result()


@health_blueprint.get("/health/ready")
async def ready() -> Response:
    """Per-check latency and error; 503 ``down`` only when no market can be served at all."""
    db = get_database(current_app)
    services = current_app.extensions.get("services")
    markets = services.markets.markets() if services is not None else []
    answers = current_app.extensions.get(_READY_CACHE)
    if answers is None:
        answers = current_app.extensions[_READY_CACHE] = _ReadyAnswers()
    db_check, redis_check, providers = await answers.get(
        float(current_app.config["READINESS_CACHE_SECONDS"]),
        sorted({p for m in markets for p in m["providers"]}))
    update_pool_gauges(db)
    checks: dict[str, Any] = {"database": dict(db_check), "redis": dict(redis_check)}
    limiter = current_app.extensions.get("ratelimit")
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
    extra = await _service_statuses()
    if extra:
        body["services"] = extra
        if isinstance(extra.get("websocket"), dict):
            body["websocket_mode"] = extra["websocket"].get("mode")
    response = jsonify(body)
    response.status_code = 503 if status == "down" else 200
    return response


async def _dependency_checks(providers: list[str]) -> Checks:
    """The database and Redis checks and the providers' breaker states, each within
    ``READINESS_TIMEOUT``."""
    db, redis = get_database(current_app), get_redis(current_app)
    timeout = float(current_app.config["READINESS_TIMEOUT"])
    db_check, redis_check, states = await asyncio.gather(
        _timed(db.check(), timeout), _timed(redis.check(), timeout), _provider_states(providers, timeout))
    db_check.pop("mode", None)
    for name, check in (("database", db_check), ("redis", redis_check)):
        DEPENDENCY_UP.labels(name).set(1 if check["ok"] else 0)
    return db_check, redis_check, states


def update_pool_gauges(db: Database) -> None:
    """Set the pool size and in-use gauges from the pool (0 while there is none)."""
    pool = db.pool
    size = pool.get_size() if pool is not None else 0
    idle = pool.get_idle_size() if pool is not None else 0
    DB_POOL_SIZE.set(size)
    DB_POOL_IN_USE.set(max(0, size - idle))


_POOL_GAUGES_EVERY = 1.0
_pool_gauges_at = [0.0]


@health_blueprint.record_once
def _register_pool_gauges(state: BlueprintSetupState) -> None:
    get_hooks(cast(Quart, state.app)).after(_pool_gauges)  # runs after every request


def _pool_gauges(req: Request, ctx_g: Any, response: Response) -> Response:
    # Keeps each worker's gauges current between scrapes, at most once a second.
    now = time.monotonic()
    if now - _pool_gauges_at[0] >= _POOL_GAUGES_EVERY:
        _pool_gauges_at[0] = now
        database = current_app.extensions.get("database")
        if database is not None:
            update_pool_gauges(database)
    return response


def metrics_registry() -> CollectorRegistry:
    """The default registry, or with ``PROMETHEUS_MULTIPROC_DIR`` set, one that aggregates the
    files of every worker process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


@health_blueprint.get("/metrics")
async def metrics() -> Response:
    # METRICS_TOKEN is checked by app_extensions.auth before this runs.
    update_pool_gauges(get_database(current_app))
    registry = metrics_registry()
    # Multiprocess mode reads every worker's files: off the event loop.
    body = generate_latest(registry) if registry is REGISTRY else await asyncio.to_thread(
        generate_latest, registry
    )
    return Response(body, status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})
