"""StreamPoller: the hub's ``Poller`` of a channel that may be fed by its exchange's stream.

The hub runs it exactly as a ``Poller`` (same lease, state, ``seq``, frames, revisions, storage).
Its loop asks ``StreamRegistry`` whether the channel's provider can stream; if so a
``StreamFeed`` (``services.live.streams``) drives it through the ``PollTarget`` methods below,
else it polls as any poller does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from core.errors import AppError
from core.timeframes import Bar, now_ms, round_bar
from plugins.base import MarketPlugin
from services.bus.broadcast import LeaseLost
from services.live.poller import Poller
from services.live.streams import StreamFeed, StreamRegistry

log = logging.getLogger(__name__)


class StreamPoller(Poller):
    """A ``Poller`` whose loop runs a ``StreamFeed`` where the provider streams (module)."""

    def __init__(self, *args: Any, streams: StreamRegistry, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams
        #: Oldest bucket the next poll must fetch again (a stream check), or None.
        self._check_from: int | None = None

    async def _loop(self) -> None:
        plugin = await self._plugin()
        async with self.streams.use(plugin) as streams:
            if streams is None:
                await super()._loop()
                return
            await StreamFeed(self, streams, self.streams.settings).run()

    async def _plugin(self) -> MarketPlugin:
        """The channel's plugin; while it cannot be had, fails as a poll would (stale, backoff)."""
        while True:
            try:
                return await self.markets.get_plugin(self.channel.market, self.channel.provider)
            except AppError as exc:
                await asyncio.sleep(await self._failed(exc.code, exc.message, exc.retry_after))

    # --- PollTarget ----------------------------------------------------------------------------
    async def restore(self) -> None:
        """Load the channel's saved state (a previous holder's)."""
        await self._restore()

    async def step(self) -> float:
        """One REST poll with the poll loop's error handling; returns the delay to the next."""
        try:
            return await self.poll_once()
        except AppError as exc:
            return await self._failed(exc.code, exc.message, exc.retry_after)
        except LeaseLost:
            raise
        except Exception as exc:  # a bug must not end the stream: log, count, back off
            log.error("poll of %s failed unexpectedly", self.channel.name, exc_info=exc)
            return await self._failed("internal_error", "internal error", None)

    async def poll_once(self, since: int | None = None) -> float:
        """A poll, fetching again from ``since`` (buckets already published) when given: their
        REST values are written, and published as revisions where they differ."""
        self._check_from = since
        try:
            return await super().poll_once()
        finally:
            self._check_from = None

    def _since(self, plugin: MarketPlugin) -> tuple[int, int]:
        since, first = super()._since(plugin)
        if self._check_from is not None:
            since = min(since, self._check_from)
        return since, first

    async def push(self, bars: list[Bar], last_closed: bool, polled_at: float) -> None:
        """Publish stream bars in one go: ascending and contiguous, each but the last closed, the
        last forming or closed as the exchange says."""
        last = int(bars[-1][0])
        started = (last + self.size + self._delay_ms() if last_closed
                   else min(now_ms(), last + self.size - 1))
        await self._emit([round_bar(b) for b in bars], int(bars[0][0]), started, polled_at)
        if self.state.last_ts is not None:
            self.state.fresh_at = min(now_ms(), self.state.last_ts + self.size)
            self._report_lag()

    async def mark_stale(self, reason: str) -> None:
        """Tell subscribers the channel is stale; the next successful poll says ``live``."""
        self.failures = max(self.failures, 1)
        await self._status("stale", reason, time.time())

    async def set_feed(self, feed: str) -> None:
        """Record where the channel's bars come from (``stream`` or ``poll``) for /channels."""
        if self.state.feed != feed:
            self.state.feed = feed
            await self.store.save(self.channel.name, self.state)

