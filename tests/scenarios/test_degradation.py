"""A failing dependency degrades the answer and recovers by itself, without a restart.

PostgreSQL and Redis are reached through a TCP proxy the test cuts and restores, so the real
servers (and other tests) are untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart

from app import create_app
from tests.support import tcp_proxy
from tests.support.helpers import readiness, serving
from tests.support.tcp_proxy import TcpProxy, proxied_config

#: A day boundary four days ago: closed, and recent enough for Redis to cache (it caches the last
#: CACHE_RECENT_SECONDS only; older history is answered from the database).
PAST = (int(time.time()) // 86_400 - 4) * 86_400_000
Q = "/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD&timeframe=1h"


proxies = tcp_proxy.proxies


@pytest.fixture
async def proxied_app(app_config: dict[str, Any], proxies: dict[str, TcpProxy]) -> AsyncIterator[Quart]:
    async with serving(proxied_config(app_config, proxies)) as application:
        yield application


async def ohlcv(app: Quart, query: str) -> tuple[int, Any, str]:
    r = await app.test_client().get(Q + query)
    return r.status_code, await r.get_json(), r.headers.get("X-Data-Source", "")


async def eventually(check: Any, within: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_redis_down_answers_from_database_and_provider_then_recovers(
    proxied_app: Quart, proxies: dict[str, TcpProxy]
) -> None:
    query = f"&start={PAST}&end={PAST + 6 * 3600_000}"
    status, body, _ = await ohlcv(proxied_app, query)
    assert status == 200 and len(body["bars"]) == 6
    proxies["redis"].cut()
    status, again, source = await ohlcv(proxied_app, query)
    assert status == 200 and again["bars"] == body["bars"] and source == "database"
    status, fresh, source = await ohlcv(proxied_app, "&limit=3")
    assert status == 200 and len(fresh["bars"]) == 3 and "provider" in source
    health = await readiness(proxied_app)
    assert health["status"] == "degraded" and health["checks"]["redis"]["ok"] is False
    assert health["checks"]["database"]["ok"] is True
    proxies["redis"].restore()

    async def recovered() -> bool:
        h = await readiness(proxied_app)
        return h["status"] == "ok"

    await eventually(recovered)
    await ohlcv(proxied_app, query)  # re-fills the cache
    status, _, source = await ohlcv(proxied_app, query)
    assert source == "cache"


async def test_postgres_down_answers_from_cache_and_provider_then_recovers(
    proxied_app: Quart, proxies: dict[str, TcpProxy]
) -> None:
    query = f"&start={PAST}&end={PAST + 4 * 3600_000}"
    status, body, _ = await ohlcv(proxied_app, query)
    assert status == 200 and len(body["bars"]) == 4
    proxies["pg"].cut()
    status, cached, source = await ohlcv(proxied_app, query)
    assert status == 200 and source == "cache" and cached["bars"] == body["bars"]
    # Another timeframe of the same closed minutes: resampled from the 1m cache, no provider call.
    r = await proxied_app.test_client().get(Q.replace("1h", "4h") + query)
    assert r.status_code == 200 and r.headers["X-Data-Source"] == "cache"
    assert len((await r.get_json())["bars"]) == 1
    other = f"&start={PAST + 86_400_000}&end={PAST + 86_400_000 + 2 * 3600_000}"
    status, fetched, source = await ohlcv(proxied_app, other)
    assert status == 200 and source == "provider" and len(fetched["bars"]) == 2
    health = await readiness(proxied_app)
    assert health["status"] == "degraded" and health["checks"]["database"]["ok"] is False
    proxies["pg"].restore()

    async def recovered() -> bool:
        h = await readiness(proxied_app)
        return h["checks"]["database"]["ok"] is True

    await eventually(recovered)
    third = f"&start={PAST + 2 * 86_400_000}&end={PAST + 2 * 86_400_000 + 3600_000}"
    status, _, source = await ohlcv(proxied_app, third)
    assert status == 200 and source == "provider"
    third_start = PAST + 2 * 86_400_000
    async with proxied_app.extensions["database"].acquire() as conn:
        stored = await conn.fetchval(
            "SELECT count(*) FROM ohlcv_1m WHERE ts >= to_timestamp($1 / 1000.0)"
            " AND ts < to_timestamp($2 / 1000.0)", third_start, third_start + 3600_000)
    # The database is written to again after recovery: the third window's 60 minutes (the
    # whole table already held the first window's 240 before the outage).
    assert stored == 60


async def test_service_starts_with_both_dependencies_unreachable(app_config: dict[str, Any]) -> None:
    cfg = dict(app_config)
    cfg["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/test"
    cfg["REDIS_URL"] = "redis://127.0.0.1:1/0"
    cfg["DB_CONNECT_TIMEOUT"] = 0.5
    cfg["REDIS_TIMEOUT"] = 0.5
    application = create_app(cfg)
    async with application.test_app():
        status, body, source = await ohlcv(application, "&limit=10")
        assert status == 200 and len(body["bars"]) == 10 and source == "provider"
        health = await readiness(application)
        assert health["status"] == "degraded"
        assert health["checks"]["database"]["error"] and health["checks"]["redis"]["error"]
        r = await application.test_client().get("/health")
        assert r.status_code == 200


async def test_postgres_and_provider_down_serve_the_cached_minutes_marked_incomplete(
    proxied_app: Quart, proxies: dict[str, TcpProxy]
) -> None:
    from app_extensions.services import get_services
    from core.errors import NetworkPluginError

    base = "/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD"
    now = time.time_ns() // 1_000_000
    start = (now // 60_000 - 30) * 60_000
    r = await proxied_app.test_client().get(f"{base}&timeframe=1m&start={start}")
    assert r.status_code == 200  # the closed minutes since `start` are in the 1m cache now
    proxies["pg"].cut()
    plugin = await get_services(proxied_app).markets.get_plugin("sim", "sim")

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise NetworkPluginError("sim: down")

    plugin.fetch_ohlcv = down  # type: ignore[method-assign]
    start5 = -(-start // 300_000) * 300_000
    r = await proxied_app.test_client().get(f"{base}&timeframe=5m&start={start5}")
    body = await r.get_json()
    assert r.status_code == 200, body
    assert r.headers["X-Data-Incomplete"] == "true" and r.headers["X-Data-Source"] == "cache"
    assert body["bars"] and body["bars"][0][0] == start5
