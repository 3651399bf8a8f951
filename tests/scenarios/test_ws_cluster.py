"""Cluster behaviour of live channels: killing the lease holder moves polling to another instance
whose clients keep receiving; Redis down means in-memory mode and Redis back means rejoining; the
last subscriber's channel survives a grace period, then stops and releases its lease."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from app import create_app
from app_extensions.services import get_services
from services.live import SubscriptionService
from tests.conftest import REDIS_URL
from tests.support.tcp_proxy import TcpProxy
from tests.support.ws import (
    WS_TEST_CONFIG,
    Client,
    assert_ts_monotonic,
    free_port,
    http_session,
    wait_for,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "sim:sim:SIM/USD:1m"
SUB = {"op": "subscribe", "market": "sim", "provider": "sim", "symbol": "SIM/USD", "history": 2}
LEASE_TTL = float(WS_TEST_CONFIG["LEASE_TTL_SECONDS"])


def lease_key(prefix: str) -> str:
    return f"{prefix}:ws:lease:{CHANNEL}"


async def lease_holder(prefix: str) -> str | None:
    client = aioredis.from_url(REDIS_URL)
    try:
        raw = await client.get(lease_key(prefix))
    finally:
        await client.aclose()
    return raw.decode() if isinstance(raw, bytes) else raw


@asynccontextmanager
async def ws_socket(app: Any) -> AsyncIterator[list[dict[str, Any]]]:
    """A Quart test-client connection subscribed to CHANNEL; yields its growing frame list."""
    frames: list[dict[str, Any]] = []
    async with app.test_client().websocket("/api/v1/ws") as ws:
        async def read() -> None:
            while True:
                frame = json.loads(await ws.receive())
                frame["_at"] = time.time()
                frames.append(frame)
        reader = asyncio.create_task(read())
        try:
            await ws.send(json.dumps(SUB))
            await wait_for(lambda: any(f["type"] == "snapshot" for f in frames))
            yield frames
        finally:
            reader.cancel()
            await asyncio.wait([reader])


def bars_after(frames: list[dict[str, Any]], mark: float) -> bool:
    return any(f["type"] == "bar" and f["_at"] > mark for f in frames)


def subscriptions(app: Any) -> SubscriptionService:
    return get_services(app).subscriptions


async def test_killing_the_lease_holder_moves_polling_and_clients_keep_receiving(
    app_config: dict[str, Any]
) -> None:
    cfg = {**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim"}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING",
           **{k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in cfg.items()}}
    port = free_port()
    # Hypercorn serves from a worker child: the whole process group is the instance.
    holder = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited in the loop
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        async with http_session() as session:
            await wait_healthy(session, f"http://127.0.0.1:{port}")
            first = await Client(session, f"http://127.0.0.1:{port}/api/v1/ws").open()
            await first.send(SUB)
            await wait_for(lambda: bool(first.of("snapshot")))
            await wait_for(lambda: lease_holder(cfg["REDIS_PREFIX"]))
            other = create_app(cfg)
            async with other.test_app(), ws_socket(other) as frames:
                me = subscriptions(other).hub.instance_id
                assert await lease_holder(cfg["REDIS_PREFIX"]) != me
                mark = time.time()
                await wait_for(lambda: bars_after(frames, mark))  # fanned out through Redis
                assert subscriptions(other).status()["polling"] == 0
                os.killpg(holder.pid, signal.SIGKILL)  # no lease release, no goodbye
                await asyncio.to_thread(holder.wait, 10)
                killed = time.monotonic()
                await wait_for(lambda: subscriptions(other).status()["polling"] == 1, within=10)
                assert time.monotonic() - killed < 2 * LEASE_TTL + 1.0
                assert await lease_holder(cfg["REDIS_PREFIX"]) == me
                mark = time.time()
                await wait_for(lambda: bars_after(frames, mark))
                assert_ts_monotonic(frames)
            await first.close()
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            await asyncio.to_thread(holder.wait, 10)


async def test_redis_down_means_memory_mode_and_redis_back_rejoins(app_config: dict[str, Any]) -> None:
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    try:
        app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim",
                          "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"})
        async with app.test_app(), ws_socket(app) as frames:
            svc = subscriptions(app)
            me = svc.hub.instance_id
            await wait_for(lambda: svc.status()["mode"] == "redis" and svc.status()["polling"] == 1)
            assert await lease_holder(app.config["REDIS_PREFIX"]) == me
            proxy.cut()
            await wait_for(lambda: svc.status()["mode"] == "memory")
            ready = await (await app.test_client().get("/health/ready")).get_json()
            assert ready["websocket_mode"] == "memory" and ready["status"] == "degraded"
            mark = time.time()
            await wait_for(lambda: bars_after(frames, mark))  # polled and delivered locally
            assert svc.status()["polling"] == 1
            proxy.restore()
            await wait_for(lambda: svc.status()["mode"] == "redis" and svc.status()["lease_mode"] == "redis")
            await wait_for(lambda: lease_holder(app.config["REDIS_PREFIX"]), within=5)
            assert await lease_holder(app.config["REDIS_PREFIX"]) == me
            mark = time.time()
            await wait_for(lambda: bars_after(frames, mark))  # through Redis again
            ready = await (await app.test_client().get("/health/ready")).get_json()
            assert ready["websocket_mode"] == "redis"
            assert_ts_monotonic(frames)
    finally:
        await proxy.stop()


async def test_grace_period_keeps_the_poller_then_stops_it_and_releases_the_lease(
    app_config: dict[str, Any]
) -> None:
    grace = 0.5
    app = create_app({**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "sim",
                      "WS_UNSUBSCRIBE_GRACE_SECONDS": grace})
    async with app.test_app():
        svc = subscriptions(app)
        async with ws_socket(app):
            await wait_for(lambda: CHANNEL in svc.workers)
            task = svc.workers[CHANNEL]
        async with ws_socket(app):  # a dashboard reload, within the grace period
            assert svc.workers[CHANNEL] is task and not task.done()
        left = time.monotonic()
        await wait_for(lambda: not svc.channels and not svc.workers, within=5)
        assert time.monotonic() - left >= grace * 0.9
        assert task.done()
        assert await lease_holder(app.config["REDIS_PREFIX"]) is None
