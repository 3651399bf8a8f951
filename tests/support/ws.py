"""Helpers of the WebSocket tests: fast config, frame collection with timeouts, metric reads."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from prometheus_client import REGISTRY
from quart import Quart

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


async def wait_for(cond: Callable[[], object], within: float = 10.0, step: float = 0.02) -> None:
    """Wait until ``cond()`` (or the awaitable it returns) is truthy; fails after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(step)


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve_app(app: Quart, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` with Hypercorn on a free 127.0.0.1 port; yields ``host:port``."""
    hc = HypercornConfig()
    port = free_port()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.graceful_timeout = 1.0
    hc.accesslog = None
    for name, value in options.items():
        setattr(hc, name, value)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, f"http://127.0.0.1:{port}", within=20)
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


class Client:
    """An aiohttp WebSocket client whose frames are collected by an owned reader task."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.frames: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.close_code: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> Client:
        self.ws = await self.session.ws_connect(self.url, autoping=True)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                frame["_at"] = time.time()
                self.frames.append(frame)
        self.close_code = self.ws.close_code

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(msg))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])


def assert_ts_monotonic(frames: list[dict[str, Any]]) -> None:
    """Per channel, bar ``ts`` never goes backwards (snapshot's last bar included)."""
    last: dict[str, int] = {}
    for f in frames:
        if f["type"] == "snapshot" and f["bars"]:
            last[f["channel"]] = max(last.get(f["channel"], -1), int(f["bars"][-1][0]))
        elif f["type"] == "bar":
            ts = int(f["bar"][0])
            assert ts >= last.get(f["channel"], -1), (f, last)
            last[f["channel"]] = ts


def http_session() -> aiohttp.ClientSession:
    """A client session without aiohttp's default cap of 100 connections."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


@asynccontextmanager
async def collecting(app: Quart, sub: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
    """A test-client connection subscribed with ``sub``; yields the (growing) list of its frames."""
    frames: list[dict[str, Any]] = []
    async with app.test_client().websocket("/api/v1/ws") as ws:
        async def read() -> None:
            while True:
                frames.append(json.loads(await ws.receive()))
        reader = asyncio.create_task(read())
        try:
            await ws.send(json.dumps(sub))
            await wait_for(lambda: any(f["type"] == "snapshot" for f in frames))
            yield frames
        finally:
            reader.cancel()
            await asyncio.wait([reader])


async def wait_healthy(session: aiohttp.ClientSession, base: str, within: float = 30.0) -> None:
    """Wait until a served instance at ``base`` answers ``/health`` with 200."""
    async def up() -> bool:
        try:
            async with session.get(f"{base}/health") as r:
                return r.status == 200
        except (OSError, aiohttp.ClientError):
            return False
    await wait_for(up, within=within)
