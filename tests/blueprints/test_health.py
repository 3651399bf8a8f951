"""/health and /health/ready: fast when dependencies are up, bounded and per-check when they are not,
503 only when the service cannot serve at all."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import pytest
from quart import Quart


async def timed_get(app: Quart, path: str) -> tuple[float, int, Any]:
    client = app.test_client()
    started = time.perf_counter()
    r = await client.get(path)
    return time.perf_counter() - started, r.status_code, await r.get_json()


async def test_both_health_endpoints_answer_within_50_ms(app: Quart) -> None:
    await timed_get(app, "/health/ready")  # warm-up
    for path in ("/health", "/health/ready"):
        runs = [await timed_get(app, path) for _ in range(7)]
        assert all(code == 200 for _, code, _ in runs)
        assert statistics.median(t for t, _, _ in runs) < 0.05, (path, [t for t, _, _ in runs])


async def test_ready_reports_each_check_modes_and_latency(app: Quart) -> None:
    _, code, body = await timed_get(app, "/health/ready")
    assert code == 200 and body["status"] == "ok"
    for name in ("database", "redis", "rate_limiter"):
        assert body["checks"][name]["ok"] is True and body["checks"][name]["error"] is None
    for name in ("database", "redis"):
        assert isinstance(body["checks"][name]["latency_ms"], int | float)
    assert body["storage_mode"] in ("plain", "timescale")
    assert body["rate_limiter_mode"] == "redis"


async def test_a_hung_dependency_is_cut_at_the_readiness_timeout(app_config: dict[str, Any]) -> None:
    from app import create_app
    from app_extensions.redis_client import get_redis

    app = create_app({**app_config, "READINESS_TIMEOUT": 0.3})
    async with app.test_app():
        redis = get_redis(app)

        async def hung_check() -> dict[str, Any]:
            await asyncio.sleep(5)
            return {"ok": True}

        redis.check = hung_check  # type: ignore[method-assign]
        took, code, body = await timed_get(app, "/health/ready")
    assert code == 200 and body["status"] == "degraded"
    assert took < 1.0
    check = body["checks"]["redis"]
    assert check["ok"] is False and "0.3" in check["error"] and check["latency_ms"] >= 250
    assert body["checks"]["database"]["ok"] is True


async def test_database_down_is_degraded_not_down(app_config: dict[str, Any]) -> None:
    from app import create_app

    app = create_app({**app_config, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test",
                      "DB_CONNECT_TIMEOUT": 0.3})
    async with app.test_app():
        _, code, body = await timed_get(app, "/health/ready")
        assert code == 200 and body["status"] == "degraded"
        assert body["checks"]["database"]["ok"] is False and body["checks"]["database"]["error"]
        _, code, _ = await timed_get(app, "/health")
        assert code == 200


async def test_no_market_to_serve_is_down_503(app_config: dict[str, Any]) -> None:
    from app import create_app

    app = create_app({**app_config, "ENABLED_MARKETS": ""})
    async with app.test_app():
        _, code, body = await timed_get(app, "/health/ready")
    assert code == 503 and body["status"] == "down"


async def test_websocket_service_status_is_reported_when_present(app: Quart) -> None:
    services = app.extensions["services"]
    if getattr(services, "subscriptions", None) is None:
        pytest.skip("the WebSocket service is not part of this tree")
    _, code, body = await timed_get(app, "/health/ready")
    assert code == 200
    assert body["services"]["websocket"]["mode"] in ("redis", "memory")
    assert body["websocket_mode"] == body["services"]["websocket"]["mode"]


async def test_ready_answers_are_reused_for_a_second(app_config: dict[str, Any]) -> None:
    """Issue 23 (11): a flood of probes costs the dependencies one check per READINESS_CACHE_SECONDS,
    and concurrent probes share one run."""
    from app import create_app
    from app_extensions.redis_client import get_redis

    app = create_app({**app_config, "READINESS_CACHE_SECONDS": 0.5})
    async with app.test_app():
        redis, runs = get_redis(app), 0
        real_check = redis.check

        async def counted() -> dict[str, Any]:
            nonlocal runs
            runs += 1
            await asyncio.sleep(0.05)
            return await real_check()

        redis.check = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(timed_get(app, "/health/ready") for _ in range(20)))
        answers += [await timed_get(app, "/health/ready") for _ in range(10)]
        assert {code for _, code, _ in answers} == {200} and runs == 1
        await asyncio.sleep(0.55)
        await timed_get(app, "/health/ready")
        assert runs == 2


async def test_ready_leaves_the_redis_circuit_alone_and_hides_driver_errors(app_config: dict[str, Any]) -> None:
    """Issue 23 (11): readiness used to reset the Redis circuit on every call (defeating
    DEPENDENCY_RETRY_AFTER during an outage) and showed the drivers' error text."""
    from app import create_app
    from app_extensions.redis_client import get_redis

    app = create_app({**app_config, "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_TIMEOUT": 0.2,
                      "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test", "DB_CONNECT_TIMEOUT": 0.2,
                      "DEPENDENCY_RETRY_AFTER": 30.0, "READINESS_CACHE_SECONDS": 0.0})
    async with app.test_app():
        redis = get_redis(app)
        assert redis.circuit.state == "open"  # the ping at start failed
        for _ in range(5):
            took, code, body = await timed_get(app, "/health/ready")
            assert code == 200 and body["status"] == "degraded" and took < 0.5
            assert redis.circuit.state == "open"
        for name in ("database", "redis"):
            assert body["checks"][name] == {**body["checks"][name], "ok": False, "error": "unavailable"}
        text = json.dumps(body)
        for leak in ("Error", "refused", "127.0.0.1", "errno", "Connect"):
            assert leak not in text, (leak, text)
