"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from quart import Quart

from app_extensions.services import get_services


def sim_calls(app: Quart) -> int:
    """fetch_ohlcv calls made by the app's sim plugin instance(s) so far."""
    total = 0
    for entry in get_services(app).markets._instances.values():
        calls: dict[str, Any] = getattr(entry.plugin, "calls", {})
        total += int(calls.get("fetch_ohlcv", 0))
    return total


async def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every Redis key under ``prefix:`` (a test's own namespace)."""
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
