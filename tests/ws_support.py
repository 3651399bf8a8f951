"""Helpers of the WebSocket tests: fast config, frame collection with timeouts, metric reads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY

#: Fast pollers and leases so the WebSocket tests take seconds.
WS_TEST_CONFIG: dict[str, Any] = {
    "POLL_INTERVALS": {},
    "POLL_INTERVAL_DEFAULT": 0.1,
    "POLL_PROVIDER_MIN_INTERVALS": {"sim": 0.1},
    "POLL_CLOSE_DELAY_SECONDS": 0.05,
    "POLL_MAX_BACKOFF_SECONDS": 0.3,
    "LEASE_TTL_SECONDS": 0.6,
    "WS_UNSUBSCRIBE_GRACE_SECONDS": 0.3,
    "DEPENDENCY_RETRY_AFTER": 0.2,
    "RATE_LIMIT_ENABLED": False,
}


async def recv_until(ws: Any, pred: Callable[[dict[str, Any]], bool], count: int = 1,
                     within: float = 10.0) -> list[dict[str, Any]]:
    """Frames received until ``count`` of them matched ``pred`` (all frames, in order)."""
    frames: list[dict[str, Any]] = []
    matched = 0
    async with asyncio.timeout(within):
        while matched < count:
            frame = json.loads(await ws.receive())
            frames.append(frame)
            matched += bool(pred(frame))
    return frames


async def wait_for(cond: Callable[[], bool | Awaitable[bool]], within: float = 10.0,
                   step: float = 0.02) -> None:
    """Wait until ``cond()`` is true; fails the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(step)


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0
