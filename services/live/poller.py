"""Poller: the one poller of a live channel, on the instance holding its lease.

It renews its own lease and stops when it loses it. Each poll fetches the channel's bars from
the last bucket it tracks up to now (one upstream call in the steady state) and publishes:
- the forming bar, only when it differs from the last one published;
- every bucket that closed since, once, with ``closed: true`` and the values fetched after its
  end (a later bar exists, or the request was made ``close_delay`` after the bucket ended);
- a bucket already published closed again, with ``revised: true``, when a refetch within
  ``revision_seconds`` of its end (or a revision announced by another writer) shows other values.
Bar frames carry the channel's ``seq`` (given by the commit that publishes them with the state,
``GroupCommit``: cluster-wide, never repeated); ``ts`` never goes backwards except in a revision (the
state is saved for a hand-over). Closed 1m bars are written first (a failed write is retried with
the next). Failures back off (honouring ``retry_after``) and publish ``status: stale``; the first
success after publishes ``live``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from core.errors import AppError, DataSourceError
from core.metrics import WS_POLL_ERRORS, WS_POLLS, WS_STORAGE_ERRORS, set_candle_lag
from core.timeframes import MINUTE_MS, Bar, bucket_start, now_ms, resample, round_bar, tf_ms
from core.types import Channel, Series
from plugins.base import MarketPlugin
from services.bus.broadcast import Lease, LeaseLost
from services.live.commits import Commit
from services.live.frames import BarFrame, Frame, StatusFrame
from services.live.settings import PollSettings
from services.live.state import PollerState, StateStore
from services.upstream.budget import MAX_PAUSE_SECONDS
from services.upstream.market_service import MarketService

log = logging.getLogger(__name__)
#: Closed 1m bars kept for a retry while storage is down (older ones are left to the REST path).
MAX_PENDING_WRITES = 10_000

# What a poller needs from its surroundings: where its frames go, where closed bars are stored,
# and how one bucket is read back (for revisions of timeframes other than 1m).

#: The bar of one bucket (series, timeframe, bucket open time), from the data REST serves.
BucketReader = Callable[[Series, str, int], Awaitable[Bar | None]]


class Output(Protocol):
    """Where a poller's frames go (the hub): status frames one by one, bar frames committed
    (numbered, published and saved with the poller's state: ``services.live.commits``)."""

    async def publish(self, frame: Frame) -> None: ...

    async def commit(self, item: Commit) -> None: ...


class Writer(Protocol):
    """Storage of closed 1m bars (``BarWriter``)."""

    async def write(self, series: Series, bars: Sequence[Sequence[float]],
                    complete: Sequence[tuple[int, int]]) -> int: ...


class Poller:
    """Polls one channel until cancelled; see the module docstring."""

    def __init__(self, channel: Channel, *, markets: MarketService, out: Output, store: StateStore,
                 db: Writer | None, settings: PollSettings, bucket: BucketReader | None = None) -> None:
        self.channel, self.markets, self.out, self.store = channel, markets, out, store
        self.db, self.settings, self.bucket = db, settings, bucket
        self.size = tf_ms(channel.timeframe)
        self.state = PollerState()
        self.failures = 0
        self.polls = 0
        self.interval = settings.default_interval
        self._pending: list[Bar] = []
        #: Closed 1m bars handed to storage lately (ts to values): written again only if changed.
        self._written: dict[int, Bar] = {}
        #: The lease this poller runs under (its commits are fenced by it), if any.
        self.lease: Lease | None = None

    # --- Loop ----------------------------------------------------------------------------------
    async def run(self, lease: Lease | None = None) -> None:
        """Poll until cancelled, or until ``lease`` is lost (the poller renews it itself, and a
        commit finding it held by another instance stops the poller too)."""
        self.lease = lease
        if lease is None:
            await self._loop()
        else:
            await lease.run(self._loop(), self.channel.name)

    async def _loop(self) -> None:
        """Errors are logged, counted and backed off; only ``LeaseLost`` ends the loop."""
        await self._restore()
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():  # a cancellation swallowed by a library below
                log.warning("poller of %s: cancellation was swallowed; stopping", self.channel.name)
                raise asyncio.CancelledError
            began = loop.time()  # polls keep their rate however long fan-out of the last one took
            try:
                delay = await self.poll_once()
            except AppError as exc:
                delay = await self._failed(exc.code, exc.message, exc.retry_after)
            except LeaseLost:
                raise
            except Exception as exc:  # a bug must not end the stream: log, count, back off
                log.error("poller of %s failed unexpectedly", self.channel.name, exc_info=exc)
                delay = await self._failed("internal_error", "internal error", None)
            await asyncio.sleep(max(0.0, began + delay - loop.time()))

    async def poll_once(self) -> float:
        """One poll: publish what changed, write closed 1m bars; returns the delay to the next."""
        provider = self.channel.provider
        plugin = await self.markets.get_plugin(self.channel.market, provider)
        self.interval = self.settings.interval_for(
            self.channel.timeframe, provider, plugin.capabilities.min_poll_interval)
        started = now_ms()
        since, first = self._since(plugin)
        bars, bars_1m = await self._poll(plugin, since)
        polled_at = time.time()
        if self.failures:
            self.failures = 0
            await self._status("live", "recovered", polled_at)
        # Storage (and the caches a revision drops) first: a client told of a closed or revised
        # bar that asks REST for it gets the same values. Closed as in _emit: a later bar exists,
        # or the minute ended before the request.
        last_ok = started - MINUTE_MS - self._delay_ms()
        n = len(bars_1m)
        await self._write([round_bar(b) for i, b in enumerate(bars_1m) if i < n - 1 or b[0] <= last_ok])
        await self._emit(bars, first, started, polled_at)
        if self.state.last_ts is not None:
            self.state.fresh_at = min(started, self.state.last_ts + self.size)
            self._report_lag()
        return self._next_delay(self.interval)

    def _delay_ms(self) -> int:
        return int(self.settings.close_delay * 1000)

    def _report_lag(self) -> None:
        """candle_lag_seconds: seconds since the end of the newest data (0 while the forming bar is
        current), growing while polls fail."""
        if self.state.fresh_at is not None:
            set_candle_lag(self.channel.name, self.channel.provider, self.channel.timeframe,
                           (now_ms() - self.state.fresh_at) / 1000)

    async def _restore(self) -> None:
        state = await self.store.load(self.channel.name)
        oldest = (bucket_start(now_ms(), self.channel.timeframe)
                  - self.settings.max_catchup_bars * self.size)
        if state is None:
            return
        if int(state.last_ts or 0) >= oldest:
            self.state = state
            self.failures = int(state.state == "stale")  # the first success then says "live"
        else:  # too old to catch up from: start afresh, but never repeat a seq
            self.state.seq = state.seq

    async def _status(self, state: str, reason: str, at: float) -> None:
        self.state.state = state
        await self.out.publish(StatusFrame(self.channel.name, state, reason, at))
        await self.store.save(self.channel.name, self.state)

    async def _failed(self, code: str, message: str, retry_after: float | None) -> float:
        self.failures += 1
        WS_POLL_ERRORS.labels(self.channel.provider, code).inc()
        self._report_lag()
        log.warning("poll of %s failed (%d in a row): %s %s", self.channel.name, self.failures,
                    code, message)
        if self.failures == 1:
            await self._status("stale", code, time.time())
        delay = min(self.settings.max_backoff, self.interval * 2 ** min(self.failures, 16))
        # bounded as the provider budget's pause: Retry-After: inf must not stop the poller for good
        return max(delay, min(retry_after or 0.0, MAX_PAUSE_SECONDS))

    def _next_delay(self, interval: float) -> float:
        """The interval, or less when the tracked bucket closes sooner (to fetch its final bar)."""
        s = self.state
        if s.last_ts is None or s.closed_ts == s.last_ts:
            return interval
        close_at = (s.last_ts + self.size) / 1000 + self.settings.close_delay
        return max(0.0, min(interval, close_at - now_ms() / 1000))

    # --- Fetching ------------------------------------------------------------------------------
    def _since(self, plugin: MarketPlugin) -> tuple[int, int]:
        """(where the fetch starts, where new bars start): the fetch reaches back over the buckets
        that closed within ``revision_seconds`` (when one call can hold them) to see revisions."""
        tf, s, now = self.channel.timeframe, self.state, now_ms()
        current = bucket_start(now, tf)
        if s.last_ts is None:
            first = current
        else:
            first = s.last_ts + self.size if s.closed_ts == s.last_ts else s.last_ts
            first = max(first, current - self.settings.max_catchup_bars * self.size)
        if self.settings.revision_seconds <= 0 or s.closed_ts is None:
            return first, first
        caps = plugin.capabilities
        fetch_size = self.size if tf == "1m" or tf in caps.timeframes else MINUTE_MS
        back = bucket_start(now - int(self.settings.revision_seconds * 1000), tf)
        if (now - back) // fetch_size >= caps.max_bars_per_call:
            return first, first
        return min(first, back), first

    async def _poll(self, plugin: MarketPlugin, since: int) -> tuple[list[Bar], list[Bar]]:
        """(bars of the channel's timeframe since ``since``, the 1m bars fetched)."""
        tf = self.channel.timeframe
        if tf == "1m":
            bars = await self._fetch(plugin, "1m", since)
            return bars, bars
        if tf in plugin.capabilities.timeframes:
            return await self._fetch(plugin, tf, since), []
        bars_1m = await self._fetch(plugin, "1m", since)
        return resample(bars_1m, tf), bars_1m

    async def _fetch(self, plugin: MarketPlugin, timeframe: str, since: int) -> list[Bar]:
        """Pages from ``since`` up to now (``ProviderCalls.pages``): paging ends on an empty page
        or one that reaches the bucket before the forming one, so the steady state is one call."""
        recent = bucket_start(now_ms(), timeframe) - tf_ms(timeframe)
        fetched = await self.markets.calls.pages(
            plugin, self.channel.series, timeframe, since, None, last_wanted=recent,
            on_call=self._count_poll)
        return fetched.bars

    def _count_poll(self) -> None:
        self.polls += 1
        WS_POLLS.labels(self.channel.provider).inc()

    # --- Publishing ----------------------------------------------------------------------------
    async def _emit(self, bars: list[Bar], first: int, started: int, polled_at: float) -> None:
        s, size = self.state, self.size
        recent = {int(b[0]): b for b in s.recent}
        frames: list[tuple[Bar, bool, bool]] = []  # (bar, closed, revised)
        for i, raw in enumerate(bars):
            bar = round_bar(raw)
            ts = int(bar[0])
            closed = i < len(bars) - 1 or ts + size + self._delay_ms() <= started
            if ts < first or (s.closed_ts is not None and ts <= s.closed_ts):
                if closed and ts in recent and recent[ts] != bar:  # published closed, now changed
                    recent[ts] = bar
                    frames.append((bar, True, True))
                continue
            if s.last_ts is not None and ts < s.last_ts:
                continue  # never backwards
            if closed:
                s.closed_ts, s.last_bar, recent[ts] = ts, None, bar
            elif ts == s.last_ts and bar == s.last_bar:
                continue  # unchanged forming bar: nothing to send
            else:
                s.last_bar = bar
            s.last_ts = ts
            frames.append((bar, closed, False))
        keep_from = now_ms() - int(self.settings.revision_seconds * 1000) - 2 * size
        s.recent = [b for ts, b in sorted(recent.items()) if ts >= keep_from]
        await self._publish(frames, started, polled_at)

    async def _publish(self, frames: list[tuple[Bar, bool, bool]], started: int,
                       polled_at: float) -> None:
        if not frames:
            return
        name, s = self.channel.name, self.state
        s.lag_ms = max(0, int(polled_at * 1000) - min(started, int(frames[-1][0][0]) + self.size))
        chunk = self.settings.catchup_chunk
        for i in range(0, len(frames), chunk):
            if i:
                await asyncio.sleep(0.05)  # pace a catch-up burst so client queues drain
            bars = [BarFrame(name, bar, closed, 0, revised, started / 1000, polled_at)
                    for bar, closed, revised in frames[i:i + chunk]]
            await self.out.commit(Commit(name, bars, s, self.lease, i + chunk >= len(frames)))

    async def revise(self, ts: int, bar_1m: Sequence[float]) -> None:
        """A stored 1m bar was revised (announced by whoever wrote it): publish the channel's
        bucket again with ``revised: true`` if it was published closed and its values changed."""
        s, tf = self.state, self.channel.timeframe
        start = bucket_start(ts, tf)
        if s.closed_ts is None or start > s.closed_ts:
            return  # not published closed yet: the next poll sends it
        if tf == "1m":
            new: Bar | None = round_bar(bar_1m)
        elif self.bucket is not None:
            new = await self.bucket(self.channel.series, tf, start)
            new = round_bar(new) if new is not None else None
        else:
            new = None
        known = {int(b[0]): b for b in s.recent}
        if new is None or known.get(start) == new:
            return
        if start in known:
            s.recent = [new if int(b[0]) == start else b for b in s.recent]
        now = time.time()
        try:
            await self._publish([(new, True, True)], int(now * 1000), now)
        except LeaseLost:  # the poll loop finds out too, and stops the poller
            log.info("revision of %s not published: the lease is another instance's",
                     self.channel.name)

    async def _write(self, closed_1m: list[Bar]) -> None:
        fresh = [b for b in closed_1m if self._written.get(int(b[0])) != b]
        if self.db is None or not (fresh or self._pending):
            return
        oldest = int(closed_1m[0][0]) if closed_1m else 0  # older ones are not fetched again
        self._written = {ts: b for ts, b in self._written.items() if ts >= oldest}
        self._written.update((int(b[0]), b) for b in fresh)
        self._pending = (self._pending + fresh)[-MAX_PENDING_WRITES:]
        try:
            await self.db.write(self.channel.series, self._pending, [])
        except DataSourceError as exc:
            WS_STORAGE_ERRORS.inc()
            log.warning("closed bars of %s not written yet (%d pending): %s", self.channel.name,
                        len(self._pending), exc.details)
            return
        self._pending = []
