"""Hub: this instance's live channels, one reference count each, and their cluster fan-out.

``async with hub.subscribe(channel, listener)`` holds one reference: the first subscribes the
instance to the channel's topic and starts contending for the channel's lease; the last to leave
starts the grace period (``grace``), after which the channel is torn down, so a dashboard that
reloads does not restart its poller. The instance holding a channel's lease runs its ``Poller``,
whose frames go to every instance with subscribers through the ``Broadcast`` and are handed, as
the same frame object, to each local listener.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import AppError
from core.metrics import WS_ACTIVE_CHANNELS, WS_POLLING_CHANNELS, forget_candle_lag
from core.types import Channel
from services.bus.broadcast import Broadcast, Lease, stop_task
from services.bus.revisions import REVISIONS
from services.live.commits import BARS, Commit, GroupCommit
from services.live.frames import BarFrame, Frame, StatusFrame, decode
from services.live.poller import Output, Poller
from services.live.settings import HubSettings
from services.live.state import StateStore

log = logging.getLogger(__name__)
PollerFactory = Callable[[Channel, Output], Poller]


class TooManyChannels(AppError):
    """This instance runs ``WS_MAX_CHANNELS`` live channels already: subscribe to a channel that
    is live, or retry later (or on another instance)."""

    status, code = 429, "too_many_subscriptions"


class Listener(Protocol):
    """A local receiver of a channel's frames (a client connection)."""

    def deliver(self, frame: Frame) -> None: ...


@dataclass(eq=False)
class ChannelEntry:
    """One channel of this instance: its reference count, listeners and newest frames."""

    channel: Channel
    subscribers: set[Listener] = field(default_factory=set)
    refs: int = 0
    grace: asyncio.Task[None] | None = None
    #: Contends for the lease, and runs the poller while it holds it.
    contender: asyncio.Task[None] | None = None
    poller: Poller | None = None
    #: The newest bar frame and the pending stale status, for late joiners.
    last_bar: BarFrame | None = None
    stale: StatusFrame | None = None


class Hub:
    """See the module docstring. Collaborators come in; nothing is patched on later."""

    def __init__(self, broadcast: Broadcast, pollers: PollerFactory, settings: HubSettings,
                 instance_id: str, commits: GroupCommit | None = None) -> None:
        self.broadcast, self.pollers, self.settings = broadcast, pollers, settings
        #: Bar frames of the pollers here, published with their state (one round trip per burst).
        self.commits = commits or GroupCommit(StateStore(broadcast))
        self.instance_id = instance_id
        self.channels: dict[str, ChannelEntry] = {}
        #: The running poll loop of each channel this instance polls.
        self.polling: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._revisions: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

    @property
    def mode(self) -> str:
        return self.broadcast.mode

    # --- Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the cluster backend and start reading its messages."""
        self._closing = False
        await self.broadcast.connect()
        await self.broadcast.subscribe(REVISIONS)
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._read(), name="ws-hub-reader"),
                           asyncio.create_task(self._revise(), name="ws-hub-revisions")]

    async def close(self) -> None:
        """Stop pollers (releasing their leases) and grace periods, then the reader."""
        self._closing = True
        for entry in list(self.channels.values()):
            for task in (entry.grace, entry.contender):
                if task is not None:
                    await stop_task(task)
        await self.commits.close()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await stop_task(task)
        await self.broadcast.disconnect()

    # --- Subscriptions -------------------------------------------------------------------------
    @asynccontextmanager
    async def subscribe(self, channel: Channel, listener: Listener) -> AsyncIterator[ChannelEntry]:
        """One reference to ``channel`` for ``listener`` while the block runs."""
        entry = await self._enter(channel, listener)
        try:
            yield entry
        finally:
            self._exit(entry, listener)

    async def _enter(self, channel: Channel, listener: Listener) -> ChannelEntry:
        async with self._lock:
            entry = self.channels.get(channel.name)
            if entry is None:
                limit = self.settings.max_channels
                if len(self.channels) >= limit:
                    raise TooManyChannels(f"this instance serves at most {limit} live channels "
                                          "(WS_MAX_CHANNELS); retry later", retry_after=5.0)
                entry = ChannelEntry(channel)
                await self._open(entry)
            if entry.grace is not None:
                entry.grace.cancel()
                entry.grace = None
            entry.refs += 1
            entry.subscribers.add(listener)
            return entry

    async def _open(self, entry: ChannelEntry) -> None:
        name = entry.channel.name
        await self.broadcast.subscribe(BARS + name)
        self.channels[name] = entry
        WS_ACTIVE_CHANNELS.inc()
        entry.contender = asyncio.create_task(self._contend(entry), name=f"ws-lease-{name}")

    def _exit(self, entry: ChannelEntry, listener: Listener) -> None:
        entry.refs -= 1
        entry.subscribers.discard(listener)
        if entry.refs == 0 and entry.grace is None and not self._closing:
            entry.grace = asyncio.create_task(self._expire(entry), name=f"ws-grace-{entry.channel.name}")

    async def _expire(self, entry: ChannelEntry) -> None:
        await asyncio.sleep(self.settings.grace)
        async with self._lock:
            name = entry.channel.name
            if entry.refs or self.channels.get(name) is not entry:
                return
            entry.grace = None  # from here the teardown runs to its end
            del self.channels[name]
            WS_ACTIVE_CHANNELS.dec()
            if entry.contender is not None:
                await stop_task(entry.contender)
            await self.broadcast.unsubscribe(BARS + name)

    # --- Leases and pollers --------------------------------------------------------------------
    async def _contend(self, entry: ChannelEntry) -> None:
        """Take the channel's lease whenever it is free and poll while holding it."""
        name = entry.channel.name
        lease = Lease(self.broadcast, name, self.instance_id, self.settings.lease_ttl)
        while True:
            try:
                if await lease.acquire():
                    await self._poll(entry, lease)
            except Exception as exc:  # a bug must not end the channel: log and contend again
                log.error("poller of %s failed", name, exc_info=exc)
            await asyncio.sleep(self.settings.lease_ttl / 3)

    async def _poll(self, entry: ChannelEntry, lease: Lease) -> None:
        name = entry.channel.name
        entry.poller = self.pollers(entry.channel, self)
        task = asyncio.create_task(entry.poller.run(lease), name=f"ws-poller-{name}")
        self.polling[name] = task
        WS_POLLING_CHANNELS.inc()
        try:
            await asyncio.shield(task)
        finally:
            await stop_task(task)
            entry.poller = None
            self.polling.pop(name, None)
            WS_POLLING_CHANNELS.dec()
            forget_candle_lag(name)

    # --- Frames --------------------------------------------------------------------------------
    async def publish(self, frame: Frame) -> None:
        """Send ``frame`` to every instance's listeners of its channel."""
        await self.broadcast.publish(BARS + frame.channel, frame.wire())

    async def commit(self, item: Commit) -> None:
        """Number ``item``'s bar frames (cluster-wide, never repeated), publish them and save the
        poller's state, with the commits of other channels ready at once (``GroupCommit``)."""
        await self.commits.commit(item)

    def dispatch(self, channel: str, frame: Frame) -> None:
        entry = self.channels.get(channel)
        if entry is None:
            return
        if isinstance(frame, BarFrame):
            # a late joiner's snapshot holds a revised bar already: it needs the newest only
            if not frame.revised and (entry.last_bar is None or frame.seq > entry.last_bar.seq):
                entry.last_bar = frame
        else:
            entry.stale = frame if frame.stale else None
        for listener in list(entry.subscribers):
            listener.deliver(frame)

    async def _read(self) -> None:
        while True:
            try:
                topic, payload = await self.broadcast.next_published()
                if topic.startswith(BARS):
                    self.dispatch(topic[len(BARS):], decode(payload))
                elif topic == REVISIONS:
                    self._revisions.put_nowait(json.loads(payload))
            except ValueError as exc:  # not ours (another publisher): drop it, keep reading
                log.warning("a message of the hub's topics is not a frame: %s", exc)
            except asyncio.QueueFull:
                log.warning("revisions arrive faster than they are applied; one dropped")
            except Exception as exc:  # a bug must not end fan-out: log and go on
                log.error("hub reader failed", exc_info=exc)
                await asyncio.sleep(self.settings.retry_after)

    async def _revise(self) -> None:
        """Hand announced revisions to the pollers of the series' channels here."""
        while True:
            msg = await self._revisions.get()
            try:
                series, ts, bar = str(msg["series"]), int(msg["ts"]), msg["bar"]
                for entry in list(self.channels.values()):
                    if entry.poller is not None and entry.channel.series.key() == series:
                        await entry.poller.revise(ts, bar)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("a revision announcement is malformed: %s", exc)
            except Exception as exc:  # a bug must not end revisions: log and go on
                log.error("applying a revision failed", exc_info=exc)
