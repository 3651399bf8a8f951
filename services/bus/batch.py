"""Group calls: calls of one backend operation made while an earlier one is in flight go out
together, in the next single round trip (what databases call a group commit).

The first call sends at once (no added wait); calls made meanwhile queue, and the flusher sends
them all as soon as the round trip in flight has answered. A burst of N channels so costs two
round trips instead of N.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")
log = logging.getLogger(__name__)


class CallBatcher(Generic[A, R]):
    """Batches the calls of one backend operation: ``await batcher(arg)`` is
    ``(await send([arg, ...]))[i]``, with the other calls queued at the same time in the same
    ``send`` (which returns one result per argument, in order)."""

    def __init__(self, send: Callable[[list[A]], Awaitable[list[R]]], name: str) -> None:
        self.send, self.name = send, name
        self._queue: list[tuple[A, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Round trips made and calls they carried (``calls / sends``: the mean batch).
        self.sends = 0
        self.calls = 0

    async def __call__(self, arg: A) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((arg, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=self.name)
        return await done

    async def close(self) -> None:
        """Stop the flusher; calls still queued are cancelled."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            await asyncio.wait([self._flusher])
        for _, done in self._queue:
            done.cancel()
        self._queue = []

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            self.sends += 1
            self.calls += len(batch)
            try:
                results = await self.send([arg for arg, _ in batch])
            except asyncio.CancelledError:
                for _, done in batch:
                    done.cancel()
                raise
            except Exception as exc:  # both backends failed, or a bug: every caller gets it
                log.error("%s: a batch of %d calls failed", self.name, len(batch), exc_info=exc)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)
