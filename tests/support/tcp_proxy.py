"""A TCP proxy for tests: put it in front of PostgreSQL or Redis, then cut and restore it.

``cut()`` closes every proxied connection and refuses new ones (the dependency "goes down");
``restore()`` accepts again. The real server is untouched, so other tests are unaffected.

The ``proxies`` fixture puts one in front of PostgreSQL and one in front of Redis, and
``proxied_config`` points an app's config at them: ``proxies = tcp_proxy.proxies`` in a test module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.up = True

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()
            self._writers.discard(dst)

    def cut(self) -> None:
        self.up = False
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def proxies() -> AsyncIterator[dict[str, TcpProxy]]:
    """Proxies in front of the test PostgreSQL (``pg``) and Redis (``redis``)."""
    pg = await TcpProxy("127.0.0.1", 5432).start()
    rd = await TcpProxy("127.0.0.1", 6379).start()
    yield {"pg": pg, "redis": rd}
    await pg.stop()
    await rd.stop()


def proxied_config(app_config: dict[str, Any], proxies: dict[str, TcpProxy], **overrides: Any) -> dict[str, Any]:
    """``app_config`` reaching PostgreSQL and Redis through ``proxies``, with short timeouts and
    retries so that a cut and a restore are noticed at once; ``overrides`` on top."""
    return {**app_config, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{proxies['pg'].port}/test",
            "REDIS_URL": f"redis://127.0.0.1:{proxies['redis'].port}/0", "DEPENDENCY_RETRY_AFTER": 0.1,
            "REDIS_TIMEOUT": 0.5, "DB_CONNECT_TIMEOUT": 1.0, **overrides}
