"""Stream feeds: a live channel fed by the exchange's kline stream instead of REST polls.

A ``StreamFeed`` runs instead of a channel's poll loop, under the same lease, and drives the
channel's poller (``PollTarget``): the poller keeps the channel's state, ``seq``, frames,
revisions and storage writes; the feed decides where bars come from.

- **Stream.** It subscribes through the provider's ``KlineStreams`` (one ``ccxt.pro`` exchange per
  provider on this instance, so channels share its connections), then fetches over REST the bars
  missed while it was not streaming (one poll), and from then on publishes each stream update as
  it arrives: the forming bar when it changed, a bar followed by a later one as closed.
- **Reconciliation.** Closed stream bars are not written to storage; once the oldest unchecked one
  closed ``verify`` seconds ago, one REST poll covering all of them fetches the exchange's values:
  those are written, and a bar whose REST values differ from what the stream said is published
  again with ``revised: true`` (counted in ``stream_rest_disagreements_total``). A stream update
  that skips a bucket is not published: a REST poll fills the hole first.
- **Fallback.** A stream that fails (refused, dropped, silent for ``silence`` seconds, only
  malformed candles) makes the channel poll over REST: the channel goes ``stale`` (status frame),
  and the REST refill makes it ``live`` again. After ``retry`` seconds of polling the stream is
  tried again, the wait doubling per failure up to ``retry_max`` (reset after a long healthy run).
  ``/channels`` shows ``feed: stream`` or ``poll``.

Which live channels are fed by a stream: the ``STREAM_*`` settings (``StreamSettings``) and the
per-provider ``KlineStreams`` of this instance (``StreamRegistry``: one ``ccxt.pro`` exchange per
provider, reference-counted by the feeds using it).

``StreamPoller`` is the hub's ``Poller`` of a channel that may be fed by a stream: the hub runs it
exactly as a ``Poller`` (same lease, state, ``seq``, frames, revisions, storage); its loop asks
``StreamRegistry`` whether the channel's provider can stream, and if so a ``StreamFeed`` drives it
through its ``PollTarget`` methods, else it polls as any poller does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import AppError, PluginFeatureNotSupportedError
from core.metrics import STREAM_DISAGREEMENTS, STREAM_LAG, STREAM_RECONNECTS
from core.timeframes import Bar, now_ms, round_bar
from plugins.base import MarketPlugin
from plugins.ccxt_stream import KlineStreams, KlineUpdate, stream_possible
from plugins.crypto import CryptoPlugin
from services.bus.broadcast import LeaseLost
from services.live.poller import Poller
from services.settings import build, setting

log = logging.getLogger(__name__)
#: Longest a stopping feed waits for the exchange to confirm its unsubscribe (seconds).
UNWATCH_TIMEOUT = 1.0
#: Longest a new subscription may take to deliver beyond ``silence`` (seconds); polled meanwhile.
SUBSCRIBE_WAIT = 60.0


@dataclass(frozen=True)
class StreamSettings:
    """``STREAM_*`` settings, read once."""

    enabled: bool = setting("STREAM_FEEDS")
    silence: float = setting("STREAM_SILENCE_SECONDS")
    verify: float = setting("STREAM_VERIFY_SECONDS")
    retry: float = setting("STREAM_RETRY_SECONDS")
    retry_max: float = setting("STREAM_RETRY_MAX_SECONDS")


class StreamRegistry:
    """The ``KlineStreams`` of this instance, one per provider, made on first use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.settings = build(StreamSettings, config)
        self.ws_urls: dict[str, str] = dict(config["PROVIDER_WS_URLS"] or {})
        self.rest_urls: dict[str, str] = dict(config["PROVIDER_URLS"] or {})
        self.timeout = float(config["PROVIDER_TIMEOUT"])
        self._streams: dict[str, KlineStreams] = {}
        self._users: dict[str, int] = {}

    def _streams_for(self, plugin: MarketPlugin) -> KlineStreams | None:
        provider = plugin.provider_id
        if (not self.settings.enabled or not isinstance(plugin, CryptoPlugin) or plugin.testnet
                or not stream_possible(provider, self.rest_urls.get(provider),
                                       self.ws_urls.get(provider))):
            return None
        if provider not in self._streams:
            self._streams[provider] = KlineStreams(
                provider, ws_base_url=self.ws_urls.get(provider),
                rest_base_url=self.rest_urls.get(provider), market_types=plugin.market_types,
                timeout=self.timeout)
        return self._streams[provider]

    @asynccontextmanager
    async def use(self, plugin: MarketPlugin) -> AsyncIterator[KlineStreams | None]:
        """The provider's streams for one channel's feed, or None when the channel is polled
        (CCXT Pro has no kline stream for it, it is a testnet, or its URLs forbid it). The
        provider's connections close when the last feed using them ends."""
        streams = self._streams_for(plugin)
        if streams is None:
            yield None
            return
        provider = plugin.provider_id
        self._users[provider] = self._users.get(provider, 0) + 1
        try:
            yield streams
        finally:
            self._users[provider] -= 1
            if not self._users[provider]:
                del self._users[provider]
                self._streams.pop(provider, None)
                await streams.close()


class PollTarget(Protocol):
    """What a feed needs of the channel's poller (``services.live.poller.Poller``)."""

    channel: Any  # core.types.Channel
    size: int
    state: Any  # PollerState: last_ts, closed_ts, recent, feed

    async def restore(self) -> None: ...

    async def step(self) -> float: ...

    async def poll_once(self, since: int | None = None) -> float: ...

    async def push(self, bars: list[Bar], last_closed: bool, polled_at: float) -> None: ...

    async def mark_stale(self, reason: str) -> None: ...

    async def set_feed(self, feed: str) -> None: ...


class StreamDown(Exception):
    """The stream failed; ``reason`` is the metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamFeed:
    """Feeds one channel from its stream, falling back to polls; see the module docstring."""

    def __init__(self, poller: PollTarget, streams: KlineStreams, settings: StreamSettings) -> None:
        self.poller, self.streams, self.settings = poller, streams, settings
        self.channel = poller.channel
        self.provider = poller.channel.provider
        #: Open times of closed bars published from the stream and not yet checked over REST.
        self.unverified: set[int] = set()
        self.serving = False

    async def run(self) -> None:
        """Feed the channel until cancelled (the caller holds the lease); unsubscribes at the end
        (bounded: the connection closes anyway with the provider's last feed)."""
        try:
            await self._loop()
        finally:
            await self.streams.unwatch(self.channel.symbol, self.channel.timeframe,
                                       wait=UNWATCH_TIMEOUT)

    async def _loop(self) -> None:
        await self.poller.restore()
        loop = asyncio.get_running_loop()
        backoff = self.settings.retry
        while True:
            began = loop.time()
            try:
                await self._stream()
            except StreamDown as down:
                STREAM_RECONNECTS.labels(self.provider, down.reason).inc()
                log.warning("stream of %s %s: polling for %.0f s", self.channel.name, down.reason,
                            backoff)
                if self.serving:
                    await self.poller.mark_stale(f"stream_{down.reason}")
            except PluginFeatureNotSupportedError:
                log.info("%s cannot be streamed: polled", self.channel.name)
                backoff = float("inf")
            self.serving = False
            await self.poller.set_feed("poll")
            if loop.time() - began > self.settings.retry_max:
                backoff = self.settings.retry  # it streamed well for a long while
            await self._verify(force=True)
            await self._poll_for(backoff)
            backoff = min(backoff * 2, self.settings.retry_max)

    async def _poll_for(self, seconds: float) -> None:
        """Poll over REST (the poller's own backoff and status frames) for ``seconds``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            began = loop.time()
            delay = await self.poller.step()
            await asyncio.sleep(max(0.0, min(began + delay, end) - loop.time()))

    async def _stream(self) -> None:
        updates = await self._subscribe()
        try:
            await self.poller.poll_once()  # the bars missed while not streaming
        except AppError as exc:
            log.warning("REST refill of %s failed: %s; polling", self.channel.name, exc.code)
            return
        self.serving = True
        await self.poller.set_feed("stream")
        while True:
            try:
                await self._apply(updates)
                await self._verify()
            except AppError as exc:  # a REST refill or check failed: polls take over for a while
                log.warning("REST call of stream %s failed: %s; polling", self.channel.name,
                            exc.code)
                raise StreamDown("rest_failed") from exc
            updates = await self._watch()

    async def _subscribe(self) -> list[KlineUpdate]:
        """Subscribe and wait for the first updates. Exchanges pace subscriptions (Binance: 5
        messages a second per connection, so 100 channels take 20 s): after ``silence`` the channel
        is polled meanwhile, for up to ``SUBSCRIBE_WAIT`` more seconds (a connection silent for
        ``silence`` is closed first: the next attempt dials anew)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.silence + SUBSCRIBE_WAIT
        malformed = self.streams.malformed
        first = asyncio.create_task(self._next(), name=f"stream-subscribe-{self.channel.name}")
        try:
            await asyncio.wait({first}, timeout=self.settings.silence)
            if not first.done():  # a connection that says nothing at all is dialled anew
                await self.streams.reset_silent(self.settings.silence)
                await asyncio.sleep(0)
            while not first.done() and loop.time() < deadline:
                began = loop.time()
                delay = await self.poller.step()
                await asyncio.wait({first}, timeout=max(0.0, min(began + delay, deadline)
                                                        - loop.time()))
            if not first.done():
                await self.streams.reset_silent(self.settings.silence)
                raise StreamDown("malformed" if self.streams.malformed > malformed else "silent")
            return first.result()
        finally:
            if not first.done():
                first.cancel()
                await asyncio.wait({first})

    async def _watch(self) -> list[KlineUpdate]:
        """The next updates of a stream that is serving; silence for ``silence`` s is a failure."""
        malformed = self.streams.malformed
        try:
            return await asyncio.wait_for(self._next(), self.settings.silence)
        except TimeoutError:
            await self.streams.reset_silent(self.settings.silence)
            raise StreamDown("malformed" if self.streams.malformed > malformed else "silent") from None

    async def _next(self) -> list[KlineUpdate]:
        try:
            return await self.streams.watch(self.channel.symbol, self.channel.timeframe)
        except PluginFeatureNotSupportedError:
            raise
        except AppError as exc:
            raise StreamDown("dropped" if self.serving else "refused") from exc

    async def _apply(self, updates: list[KlineUpdate]) -> None:
        """Publish one watch's updates together (a bucket's close and the next bar are one
        publish): the newest values per bucket, each but the last closed. Updates that skip a
        bucket, or start after a bucket that never closed, are not published: REST fills it."""
        by_ts: dict[int, KlineUpdate] = {}
        for u in updates:
            prev = by_ts.get(int(u.bar[0]))
            by_ts[int(u.bar[0])] = KlineUpdate(u.bar, u.closed or bool(prev and prev.closed),
                                               u.event_ms)
        run = [by_ts[ts] for ts in sorted(by_ts)]
        s, size, first = self.poller.state, self.poller.size, int(run[0].bar[0])
        contiguous = all(int(b.bar[0]) - int(a.bar[0]) == size and a.closed
                         for a, b in itertools.pairwise(run))
        follows = s.last_ts is None or first <= s.last_ts or (
            first == s.last_ts + size and s.closed_ts == s.last_ts)
        if not (contiguous and follows):
            await self.poller.poll_once()
            return
        await self.poller.push([u.bar for u in run], run[-1].closed, time.time())
        now = time.time()
        for u in run:
            if u.event_ms is not None:
                STREAM_LAG.labels(self.provider).observe(max(0.0, now - u.event_ms / 1000))
            if u.closed:
                self.unverified.add(int(u.bar[0]))

    async def _verify(self, force: bool = False) -> None:
        """One REST poll over every unchecked closed bar, when the oldest is due (or ``force``);
        counts the bars whose published values it revised."""
        if not self.unverified:
            return
        oldest = min(self.unverified)
        due = oldest + self.poller.size + int(self.settings.verify * 1000)
        if not force and now_ms() < due:
            return
        before = {int(b[0]): b for b in self.poller.state.recent}
        checked, self.unverified = self.unverified, set()
        try:
            await self.poller.poll_once(since=oldest)
        except AppError:
            if force:  # falling back anyway: the polls' revision window takes over
                return
            self.unverified |= checked
            raise
        after = {int(b[0]): b for b in self.poller.state.recent}
        changed = sum(1 for ts in checked if ts in before and after.get(ts, before[ts]) != before[ts])
        if changed:
            STREAM_DISAGREEMENTS.labels(self.provider).inc(changed)
            log.info("%s: %d closed stream bars differed from REST (revised)", self.channel.name,
                     changed)


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

