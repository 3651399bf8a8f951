"""Resume across a poller hand-over (issue 11): the instance polling a channel is killed (kill -9,
no goodbye); its client reconnects to the other instance with ``since`` and ends with exactly the
exchange's bars (no hole, no duplicate), and ``seq`` never repeats across the two instances.

The kill is timed a few seconds before a minute boundary, so the bucket that closes during the
hand-over was never published closed by the killed instance."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from app import create_app
from app_extensions.services import get_services
from core.timeframes import MINUTE_MS
from tests.conftest import REDIS_URL
from tests.scenarios.test_ws_cluster import ROOT
from tests.support.exchange_emulator import ExchangeEmulator, fixtures
from tests.support.exchange_emulator.checks import assert_same_bars, fetch_klines
from tests.support.helpers import clear_shared_markets
from tests.support.ws import WS_TEST_CONFIG, Client, free_port, http_session, serve_app, wait_for, wait_healthy

pytestmark = pytest.mark.slow
emulator = fixtures.emulator
CHANNEL = "crypto:binance:BTC/USDT:1m"
SUB = {"op": "subscribe", "market": "crypto", "provider": "binance", "symbol": "BTC/USDT",
       "timeframe": "1m", "history": 3}


async def redis_get(prefix: str, key: str) -> bytes | str | None:
    client = aioredis.from_url(REDIS_URL)
    try:
        raw = await client.get(f"{prefix}:{key}")
    finally:
        await client.aclose()
    return raw


async def redis_int(prefix: str, key: str) -> int:
    return int(await redis_get(prefix, key) or 0)


async def lease_holder(prefix: str, channel: str) -> bool:
    return bool(await redis_get(prefix, f"ws:lease:{channel}"))


def merged(frames: list[dict[str, Any]]) -> dict[int, list[float]]:
    """What a chart shows: snapshots and bar frames applied in order, by ts."""
    bars: dict[int, list[float]] = {}
    for f in frames:
        for bar in f["bars"] if f["type"] == "snapshot" else [f["bar"]] if f["type"] == "bar" else []:
            bars[int(bar[0])] = bar
    return bars


async def test_a_client_resumes_with_since_on_the_other_instance_after_a_kill_9(
    app_config: dict[str, Any], emulator: ExchangeEmulator
) -> None:
    clear_shared_markets()
    cfg = {**app_config, **WS_TEST_CONFIG, "ENABLED_MARKETS": "crypto",
           "PROVIDER_URLS": {"binance": emulator.url}, "POLL_PROVIDER_MIN_INTERVALS": {"binance": 0.1}}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING",
           **{k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in cfg.items()}}
    port = free_port()
    poller = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited in the loop
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "app:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    other = create_app(cfg)
    try:
        async with http_session() as session, serve_app(other) as addr:
            await wait_healthy(session, f"http://127.0.0.1:{port}")
            first = await Client(session, f"http://127.0.0.1:{port}/api/v1/ws").open()
            await first.send(SUB)
            await wait_for(lambda: bool(first.of("snapshot")), within=10)
            await wait_for(lambda: lease_holder(cfg["REDIS_PREFIX"], CHANNEL), within=10)
            hub = get_services(other).subscriptions.hub
            keeper = await Client(session, f"http://{addr}/api/v1/ws").open()  # the other contends
            await keeper.send(SUB)
            await wait_for(lambda: bool(keeper.of("snapshot")), within=10)
            assert not hub.polling  # the subprocess polls
            # kill the poller 3 s before a minute ends: that bucket closes during the hand-over
            await asyncio.sleep((MINUTE_MS - 3000 - time.time() * 1000 % MINUTE_MS) % MINUTE_MS / 1000)
            seq_at_kill = await redis_int(cfg["REDIS_PREFIX"], f"ws:seq:{CHANNEL}")
            os.killpg(poller.pid, signal.SIGKILL)
            await asyncio.to_thread(poller.wait, 10)
            assert first._task is not None
            await asyncio.wait_for(first._task, 10)  # the client sees its connection end
            since = max(merged(first.frames))
            boundary = (since // MINUTE_MS + 1) * MINUTE_MS
            second = await Client(session, f"http://{addr}/api/v1/ws").open()
            await second.send({**{k: v for k, v in SUB.items() if k != "history"}, "since": since})
            await wait_for(lambda: CHANNEL in hub.polling, within=10)

            def past_the_boundary() -> bool:
                shown = merged(second.frames)
                final = any(f["type"] == "bar" and f["closed"] and f["bar"][0] == since
                            for f in second.frames)
                in_snapshot = any(f["type"] == "snapshot" and any(b[0] >= boundary for b in f["bars"])
                                  for f in second.frames)
                return (final or in_snapshot) and max(shown, default=0) >= boundary
            await wait_for(past_the_boundary, within=20)
            assert second.of("snapshot")[0]["bars"][0][0] == since
            seqs = [f["seq"] for f in first.frames + second.frames if f["type"] == "bar"]
            assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), seqs  # never repeats
            assert all(f["seq"] > seq_at_kill for f in second.of("bar")), (seq_at_kill, seqs)
            shown = merged(first.frames + second.frames)
            closed_end = max(shown)  # the newest bar may still be forming
            closed = [shown[ts] for ts in sorted(shown) if ts < closed_end]
            assert [int(b[0]) for b in closed] == list(range(int(closed[0][0]), closed_end, MINUTE_MS))
            assert since in [int(b[0]) for b in closed]  # the bucket that closed in the hand-over
            assert_same_bars(closed, await fetch_klines(emulator.url, "1m", int(closed[0][0]), closed_end))
            for c in (first, second, keeper):
                await c.close()
    finally:
        if poller.poll() is None:
            os.killpg(poller.pid, signal.SIGKILL)
            await asyncio.to_thread(poller.wait, 10)
