"""Owner of cache warming's tasks (the ``Warmer`` of ``services/bars/warmup.py``, built by
``app_extensions.services``): at start a background task prefetches what
was live and most asked recently; another records both every ``WARMUP_RECORD_SECONDS``. Both are
tasks of this object, stopped (and the last counts flushed) by ``close()``, which ``create_app``
calls before the services, Redis and the pool close. Reach it with ``get_warmup(app)``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from quart import Quart

from app_extensions.services import Services
from core.errors import AppError
from services.bars.warmup import Warmer, WarmupReport

log = logging.getLogger(__name__)


class Warmup:
    """Cache warming at start and the records it works from."""

    def __init__(self, services: Services, app: Quart | None = None) -> None:
        #: Built with the other services (``app_extensions.services``).
        self.warmer: Warmer = services.warmer
        self.shutdown = asyncio.Event()
        self.step_timeout = 5.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.warming: asyncio.Task[WarmupReport] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        self.step_timeout = float(app.config["SHUTDOWN_TIMEOUT"])
        app.extensions["warmup"] = self
        app.before_serving(self.start)

    async def start(self) -> None:
        self.shutdown.clear()
        if self.warmer.settings.enabled:
            self.warming = self._spawn(self.warmer.run(), "cache-warmup")
        self._spawn(self._record_loop(), "cache-warmup-records")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _record_loop(self) -> None:
        interval = self.warmer.settings.record_seconds
        while not self.shutdown.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.shutdown.wait(), timeout=interval)
            if self.shutdown.is_set():
                break  # close() writes the last counts, once
            try:
                await self.warmer.record()
            except (AppError, OSError, RuntimeError) as exc:
                log.warning("recording for warm-up failed, next try in %.0f s: %s", interval, exc,
                            exc_info=True)

    async def close(self) -> None:
        """Stop warming and recording; flush the last counts (each step bounded)."""
        self.shutdown.set()
        if self.warming is not None and not self.warming.done():
            self.warming.cancel()
        tasks = list(self._tasks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), self.step_timeout)
        try:
            written = await asyncio.wait_for(self.warmer.record(), self.step_timeout)
        except (TimeoutError, AppError, OSError, RuntimeError) as exc:
            log.warning("last warm-up records not written: %s", exc)
        else:
            if not written:
                log.warning("last warm-up records not written: Redis unavailable")


def get_warmup(app: Quart) -> Warmup:
    owner: Warmup = app.extensions["warmup"]
    return owner
