"""Issue 23 (2): anonymous reads of old history cannot grow Redis. Every closed 1m bar fetched from a
provider used to go into the series' sorted set however old, each write resetting its expiry, and
every answer was cached for CACHE_TTL_CLOSED: about 240 bytes of Redis per bar served. Now Redis
holds the last CACHE_RECENT_SECONDS only; old history is answered from the database."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from app import create_app
from core.timeframes import now_ms
from tests.conftest import REDIS_URL

T2024 = 1_704_067_200_000
Q = "/api/v1/ohlcv?market=sim&provider=sim&symbol=SIM/USD"


async def prefix_bytes(prefix: str) -> tuple[int, list[bytes]]:
    """Bytes Redis uses for the keys under ``prefix`` (MEMORY USAGE of each), and the keys."""
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        total = 0
        for key in keys:
            total += int(await client.memory_usage(key, samples=0) or 0)
        return total, keys
    finally:
        await client.aclose()


async def test_a_flood_of_distinct_old_ranges_grows_redis_by_less_than_64_bytes_a_bar(
    app_config: dict[str, Any], redis_prefix: str
) -> None:
    app = create_app({**app_config, "RATE_LIMIT_ENABLED": False, "WARMUP_ENABLED": False})
    async with app.test_app():
        client = app.test_client()
        assert (await client.get(Q + "&timeframe=1m&limit=30")).status_code == 200  # a recent read
        before, _ = await prefix_bytes(redis_prefix)
        served = 0
        for i in range(40):  # distinct old ranges, each a new provider fetch and a new answer
            tf, size = ("1m", 60_000) if i % 2 else ("5m", 300_000)
            start = T2024 + i * 1000 * 300_000
            r = await client.get(Q + f"&timeframe={tf}&start={start}&end={start + 1000 * size}&limit=1000")
            assert r.status_code == 200
            served += len((await r.get_json())["bars"])
        after, keys = await prefix_bytes(redis_prefix)
        assert served >= 30_000
        per_bar = (after - before) / served
        print(f"redis growth: {after - before} bytes for {served} bars: {per_bar:.2f} B/bar")
        assert per_bar < 64, f"{after - before} bytes for {served} bars: {per_bar:.1f} B/bar"
        # The 1m set holds recent minutes only, whatever old minutes were fetched.
        redis = aioredis.from_url(REDIS_URL)
        try:
            oldest = now_ms() - int(app.config["CACHE_RECENT_SECONDS"]) * 1000
            for key in keys:
                if b":1m:" in key:
                    first: list[Any] = await redis.zrange(key, 0, 0, withscores=True)
                    assert first, key  # the recent read's minutes are cached
                    member, score = first[0]
                    assert score >= oldest - 60_000 and json.loads(member)[0] == score, (key, first)
        finally:
            await redis.aclose()
