"""Liveness, readiness and the Prometheus scrape endpoint. What readiness checks, how often and
what its errors say is ``app_extensions/readiness.py``'s."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from quart import Blueprint, Quart, Request, Response, current_app, jsonify
from quart.blueprints import BlueprintSetupState

from app_extensions.db_pool import get_database
from app_extensions.hooks import get_hooks
from app_extensions.readiness import get_readiness, update_pool_gauges

health_blueprint = Blueprint("health", __name__)


@health_blueprint.get("/health")
async def health() -> Response:
    return jsonify({"status": "ok"})


@health_blueprint.get("/health/ready")
async def ready() -> Response:
    """Per-check latency and error; 503 ``down`` only when no market can be served at all."""
    body = await get_readiness(current_app).report()
    response = jsonify(body)
    response.status_code = 503 if body["status"] == "down" else 200
    return response


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
