"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app, jsonify

from app_extensions.db_pool import get_database
from app_extensions.redis_client import get_redis
from services.metrics import DEPENDENCY_UP

health_blueprint = Blueprint("health", __name__)


@health_blueprint.get("/health")
async def health() -> Response:
    return jsonify({"status": "ok"})


@health_blueprint.get("/health/ready")
async def ready() -> Response:
    db, redis = get_database(current_app), get_redis(current_app)
    db_check, redis_check = await asyncio.gather(db.check(), redis.check())
    for name, check in (("database", db_check), ("redis", redis_check)):
        DEPENDENCY_UP.labels(name).set(1 if check["ok"] else 0)
    # The sim market serves without either dependency, so the service is never "down" on their
    # account alone: it answers from what is left.
    status = "ok" if db_check["ok"] and redis_check["ok"] else "degraded"
    response = jsonify({
        "status": status,
        "storage_mode": db.mode,
        "checks": {"database": db_check, "redis": redis_check},
    })
    response.status_code = 200
    return response


@health_blueprint.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})
