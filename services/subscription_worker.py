"""SubscriptionWorker: the one poller of a live channel (on the instance holding its lease).

Each poll fetches the channel's bars from the last bucket it tracks up to now (one upstream call
in the steady state) and publishes:
- the forming bar, only when it differs from the last one published;
- every bucket that closed since, once, with ``closed: true`` and the values fetched after its
  close (a later bar exists, or the request was made ``POLL_CLOSE_DELAY_SECONDS`` after the bucket
  ended), never guessed;
so after an outage the missed bars are fetched and published in order, and ``ts`` never goes
backwards (the state survives a hand-over through ``ChannelStateStore``). Closed 1m bars are written
to storage; a write that fails is kept and retried with the next one. Upstream failures back off
(honouring ``retry_after``) and publish ``status: stale``; the first success after publishes
``status: live``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import AppError, DataSourceError, InvalidParameter
from core.metrics import WS_POLL_ERRORS, WS_POLLS, WS_STORAGE_ERRORS, set_candle_lag
from core.ports import RedisClient
from core.timeframes import MINUTE_MS, TIMEFRAMES, Bar, bucket_start, now_ms, resample, tf_ms
from core.types import Series
from plugins.base import MarketPlugin
from services.market_service import MarketService
from services.provider_budget import MAX_PAUSE_SECONDS
from services.sources import DbSource

log = logging.getLogger(__name__)
Publish = Callable[[str, dict[str, Any], int, float], Awaitable[None]]
#: Closed 1m bars kept for a retry while storage is down (older ones are left to the REST path).
MAX_PENDING_WRITES = 10_000


@dataclass(frozen=True)
class Channel:
    """One live stream: ``market:provider:symbol:timeframe`` (the symbol may contain ``:``)."""

    market: str
    provider: str
    symbol: str
    timeframe: str

    @property
    def name(self) -> str:
        return f"{self.market}:{self.provider}:{self.symbol}:{self.timeframe}"

    @property
    def series(self) -> Series:
        return Series(self.market, self.provider, self.symbol)

    @classmethod
    def parse(cls, name: str) -> Channel:
        """Parse a channel name; raises ``InvalidParameter``."""
        parts = name.split(":")
        if len(parts) < 4 or not all(parts) or parts[-1] not in TIMEFRAMES:
            shape = "must be market:provider:symbol:timeframe"
            raise InvalidParameter(f"channel {shape}", details={"channel": [shape]})
        return cls(parts[0], parts[1], ":".join(parts[2:-1]), parts[-1])


@dataclass(frozen=True)
class PollSettings:
    """Poll timing, from config (``POLL_*``)."""

    intervals: dict[str, float] = field(default_factory=dict)
    default_interval: float = 5.0
    provider_min: dict[str, float] = field(default_factory=dict)
    close_delay: float = 0.5
    max_backoff: float = 30.0
    max_catchup_bars: int = 5000
    catchup_chunk: int = 64

    def interval_for(self, timeframe: str, provider: str, capability_min: float) -> float:
        """The timeframe's interval, never below the provider's minimum (its rate limit)."""
        floor = self.provider_min.get(provider, capability_min)
        return max(float(self.intervals.get(timeframe, self.default_interval)), float(floor))


def _valid_state(state: Any) -> bool:
    """A saved poller state: ``last_ts`` and ``closed_ts`` integers or null, ``last_bar`` a bar or
    null."""
    if not isinstance(state, dict):
        return False
    ints_ok = all(state.get(k) is None or (isinstance(state.get(k), int)
                                             and not isinstance(state.get(k), bool))
                  for k in ("last_ts", "closed_ts"))
    bar = state.get("last_bar")
    bar_ok = bar is None or (isinstance(bar, list) and len(bar) == 6
                             and all(isinstance(v, (int, float)) for v in bar))
    return ints_ok and bar_ok


class ChannelStateStore:
    """The last published state of each channel's poller, in Redis (shared) and in memory."""

    def __init__(self, redis: RedisClient | None, ttl: float = 3600.0) -> None:
        self.redis = redis
        self.ttl = int(ttl)
        self._local: dict[str, dict[str, Any]] = {}

    def _key(self, channel: str) -> str:
        assert self.redis is not None
        return self.redis.key("ws", "state", channel)

    async def load(self, channel: str) -> dict[str, Any] | None:
        """The saved state, Redis first (another instance may have polled last)."""
        if self.redis is not None:
            try:
                raw = await self.redis.run(lambda r: r.get(self._key(channel)))
                if raw is not None:
                    state = json.loads(raw)
                    if _valid_state(state):
                        return dict(state)
                    log.warning("state of %s in Redis is not a poller state; ignored", channel)
            except DataSourceError as exc:
                log.debug("state of %s not loaded from Redis: %s", channel, exc.details)
            except ValueError:  # not JSON (a foreign or truncated value): must not stop the poller
                log.warning("state of %s in Redis is not JSON; ignored", channel)
        return self._local.get(channel)

    async def save(self, channel: str, state: dict[str, Any]) -> None:
        """Remember ``state`` here and, when Redis answers, for the whole cluster."""
        self._local[channel] = state
        if self.redis is not None and self.redis.available:
            blob = json.dumps(state)
            try:
                await self.redis.run(lambda r: r.set(self._key(channel), blob, ex=self.ttl))
            except DataSourceError as exc:
                log.debug("state of %s not saved to Redis: %s", channel, exc.details)


class SubscriptionWorker:
    """Polls one channel until cancelled; see the module docstring."""

    def __init__(self, channel: Channel, *, markets: MarketService, publish: Publish,
                 store: ChannelStateStore, db: DbSource | None, settings: PollSettings) -> None:
        self.channel = channel
        self.markets = markets
        self.publish = publish
        self.store = store
        self.db = db
        self.settings = settings
        self.size = tf_ms(channel.timeframe)
        #: Open time of the newest bar published, of the newest closed one, and the forming bar.
        self.last_ts: int | None = None
        self.closed_ts: int | None = None
        self.last_bar: Bar | None = None
        self.failures = 0
        self.polls = 0
        self.interval = settings.default_interval
        self._pending: list[Bar] = []
        #: Open time of the newest 1m bar handed to storage.
        self._written = -1
        #: Wall time (ms) up to which this channel's data is known: for candle_lag_seconds.
        self._fresh_at: int | None = None

    async def run(self) -> None:
        """Poll until cancelled. Errors are logged, counted and backed off; never raised."""
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
            except Exception as exc:  # a bug must not end the stream: log, count, back off
                log.error("poller of %s failed unexpectedly", self.channel.name, exc_info=exc)
                delay = await self._failed("internal_error", "internal error", None)
            await asyncio.sleep(max(0.0, began + delay - loop.time()))

    async def poll_once(self) -> float:
        """One poll: publish what changed, write closed 1m bars; returns the delay to the next."""
        name, provider = self.channel.name, self.channel.provider
        plugin = await self.markets.get_plugin(self.channel.market, provider)
        self.interval = self.settings.interval_for(
            self.channel.timeframe, provider, plugin.capabilities.min_poll_interval
        )
        started = now_ms()
        bars, bars_1m = await self._poll(plugin)
        t_poll = time.time()
        if self.failures:
            self.failures = 0
            await self.publish(name, {"type": "status", "channel": name, "state": "live",
                                      "reason": "recovered"}, -1, t_poll)
        await self._emit(bars, started, t_poll)
        if self.last_ts is not None:
            self._fresh_at = min(started, self.last_ts + self.size)
            self._report_lag()
        # closed as in _emit: a later bar exists, or the minute ended before the request
        last_ok = started - MINUTE_MS - self._delay_ms()
        n = len(bars_1m)
        await self._write([b for i, b in enumerate(bars_1m)
                           if self._written < b[0] and (i < n - 1 or b[0] <= last_ok)])
        return self._next_delay(self.interval)

    def _report_lag(self) -> None:
        """candle_lag_seconds: seconds since the end of the newest data (0 while the forming bar is
        current), growing while polls fail."""
        if self._fresh_at is not None:
            set_candle_lag(self.channel.name, self.channel.provider, self.channel.timeframe,
                           (now_ms() - self._fresh_at) / 1000)

    def _delay_ms(self) -> int:
        return int(self.settings.close_delay * 1000)

    async def _restore(self) -> None:
        state = await self.store.load(self.channel.name)
        oldest = bucket_start(now_ms(), self.channel.timeframe) - self.settings.max_catchup_bars * self.size
        if state and int(state.get("last_ts") or 0) >= oldest:
            self.last_ts, self.closed_ts = state.get("last_ts"), state.get("closed_ts")
            self.last_bar = state.get("last_bar")

    async def _failed(self, code: str, message: str, retry_after: float | None) -> float:
        self.failures += 1
        WS_POLL_ERRORS.labels(self.channel.provider, code).inc()
        self._report_lag()
        log.warning("poll of %s failed (%d in a row): %s %s", self.channel.name, self.failures,
                    code, message)
        if self.failures == 1:
            name = self.channel.name
            await self.publish(name, {"type": "status", "channel": name, "state": "stale",
                                      "reason": code}, -1, time.time())
        delay = min(self.settings.max_backoff, self.interval * 2 ** min(self.failures, 16))
        # bounded as the provider budget's pause: Retry-After: inf must not stop the poller for good
        return max(delay, min(retry_after or 0.0, MAX_PAUSE_SECONDS))

    def _next_delay(self, interval: float) -> float:
        """The interval, or less when the tracked bucket closes sooner (to fetch its final bar)."""
        if self.last_ts is None or self.closed_ts == self.last_ts:
            return interval
        close_at = (self.last_ts + self.size) / 1000 + self.settings.close_delay
        return max(0.0, min(interval, close_at - now_ms() / 1000))

    def _since(self) -> int:
        current = bucket_start(now_ms(), self.channel.timeframe)
        if self.last_ts is None:
            return current
        since = self.last_ts + self.size if self.closed_ts == self.last_ts else self.last_ts
        return max(since, current - self.settings.max_catchup_bars * self.size)

    async def _poll(self, plugin: MarketPlugin) -> tuple[list[Bar], list[Bar]]:
        """(bars of the channel's timeframe since the tracked bucket, the 1m bars fetched)."""
        tf = self.channel.timeframe
        since = self._since()
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

    async def _emit(self, bars: list[Bar], started: int, t_poll: float) -> None:
        name, size = self.channel.name, self.size
        sent = 0
        for i, bar in enumerate(bars):
            ts = int(bar[0])
            if self.last_ts is not None and ts < self.last_ts:
                continue  # never backwards
            closed = i < len(bars) - 1 or ts + size + self._delay_ms() <= started
            if closed:
                if self.closed_ts is not None and ts <= self.closed_ts:
                    continue
                self.closed_ts, self.last_bar = ts, None
            elif ts == self.last_ts and bar == self.last_bar:
                continue  # unchanged forming bar: nothing to send
            else:
                self.last_bar = bar
            self.last_ts = ts
            await self.publish(name, {"type": "bar", "channel": name, "bar": bar, "closed": closed},
                               ts, t_poll)
            sent += 1
            if sent % self.settings.catchup_chunk == 0:
                await asyncio.sleep(0.05)  # pace a catch-up burst so client queues drain
        if sent:
            await self.store.save(name, {"last_ts": self.last_ts, "closed_ts": self.closed_ts,
                                         "last_bar": self.last_bar})

    async def _write(self, closed_1m: list[Bar]) -> None:
        if self.db is None or not (closed_1m or self._pending):
            return
        if closed_1m:
            self._written = int(closed_1m[-1][0])
        self._pending = (self._pending + closed_1m)[-MAX_PENDING_WRITES:]
        try:
            await self.db.write(self.channel.series, self._pending, [])
        except DataSourceError as exc:
            WS_STORAGE_ERRORS.inc()
            log.warning("closed bars of %s not written yet (%d pending): %s", self.channel.name,
                        len(self._pending), exc.details)
            return
        self._pending = []
