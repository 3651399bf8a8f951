"""One WebSocket client: its subscriptions, and its messages sent in order through its ``Outlet``
(the ASGI ``websocket.send``).

The hub's fan-out hands a broadcast frame to each connection without waiting: the connection
queues the frame's text (the same ``str`` for every client of the channel, ``wire``) and a drain
task, alive only while something waits, awaits the sends one by one. A client whose sends wait (the
peer reads slower than frames come) so never holds up the others. The queue is bounded: when it is
full the client is not keeping up and is dropped with close code 1013, counted as ``flood`` when
most of what waits are answers to its own messages, else ``slow``; the server's memory stays
bounded. A send the server has not taken within ``send_timeout`` seconds means a dead or stalled
peer (``send_timeout``): ``SubscriptionService`` checks every connection about once a second
(``stalled``) instead of arming a timer for each message. Per channel a client is never sent a bar
older than what it has (the snapshot included), except a revision.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from core.metrics import WS_CLIENTS_DROPPED, WS_FANOUT_LATENCY, WS_FRAMES_SENT
from core.timeframes import Bar
from services.live.frames import BarFrame, Frame
from services.live.wire import Message, Reply

#: Close codes: 1013 "try again later" for clients too slow for their stream, 1001 at shutdown.
CLOSE_SLOW = 1013
CLOSE_GOING_AWAY = 1001
#: Where one client connection's messages go: the ASGI ``websocket.send`` of a message's text,
#: awaited (it returns once the server has taken it, and waits while the peer reads slower).
Outlet = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class Subscription:
    """A connection's view of one channel."""

    #: Newest bar ``ts`` sent on this channel (-1: none yet), newest closed bucket, newest seq.
    last_ts: int = -1
    closed_ts: int = -1
    last_seq: int = 0
    #: The last bar sent (``bar`` and ``closed``): an identical one is not sent again.
    last: tuple[Bar, bool] | None = None
    #: The snapshot's last bar ts and when the snapshot was ready: a frame of that bar from a poll
    #: that started before may hold older values than the snapshot and is not sent.
    snapshot_ts: int = -1
    snapshot_at: float = 0.0
    #: False until the snapshot is queued; frames arriving before are held, then replayed.
    ready: bool = False
    held: list[Frame] = field(default_factory=list)
    #: The hub's reference to the channel (``hub.subscribe``, entered); exiting it leaves.
    scope: AbstractAsyncContextManager[Any] | None = None


class Connection:
    """A client connection's state; the blueprint runs its reader inside ``until_dropped``."""

    # Slots: thousands of idle connections each hold one (no instance dict, ~0.3 KiB less).
    __slots__ = ("__weakref__", "_deadline", "_drainer", "_gone", "_queue", "_replies",
                 "auth_pending", "client", "close_code", "drop_reason", "key", "max_queue",
                 "outlet", "send_timeout", "sending_since", "subs")

    def __init__(self, outlet: Outlet, *, max_queue: int, send_timeout: float,
                 client: str = "") -> None:
        self.outlet = outlet
        #: The client's identity (API key, else IP), for the per-client connection limit.
        self.client = client
        #: With auth on: the digest of the connection's API key (re-checked while it is open), and
        #: True while it still has to send its ``auth`` message.
        self.key: str | None = None
        self.auth_pending = False
        self.max_queue = max_queue
        self.send_timeout = send_timeout
        self.subs: dict[str, Subscription] = {}
        self.drop_reason: str | None = None
        self.close_code = CLOSE_SLOW
        #: Messages not sent yet (made when first needed), and the task sending them.
        self._queue: deque[tuple[str, float | None, Message]] | None = None
        self._drainer: asyncio.Task[None] | None = None
        #: Loop time the send in progress was handed to the server (None: no send in progress).
        self.sending_since: float | None = None
        #: A send failed: the peer is gone, nothing more is sent.
        self._gone = False
        #: Answers to the client's own messages waiting in the queue.
        self._replies = 0
        self._deadline: asyncio.Timeout | None = None

    # --- Writing -------------------------------------------------------------------------------
    def send_frame(self, frame: dict[str, Any]) -> None:
        """Send a reply frame (``subscribed``, ``snapshot``, ``pong``, ``error``...)."""
        if self._put(str(frame["type"]), None, Reply(frame)):
            self._replies += 1

    def _put(self, kind: str, t_poll: float | None, message: Message) -> bool:
        """Queue ``message`` for the drain task (started when none runs); True when queued."""
        if self.drop_reason is not None or self._gone:
            return False
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self.max_queue:
            # Most of the backlog answers the client's own messages: it floods, it is not slow.
            self.drop("flood" if 2 * self._replies > len(queue) else "slow")
            return False
        queue.append((kind, t_poll, message))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(queue), name="ws-drain")
        return True

    async def _drain(self, queue: deque[tuple[str, float | None, Message]]) -> None:
        """Send what waits, in order, each send awaited; ends when nothing waits."""
        clock = asyncio.get_running_loop().time
        try:
            while queue and self.drop_reason is None:
                kind, t_poll, message = queue.popleft()
                if t_poll is None:
                    self._replies -= 1
                self.sending_since = clock()
                await self.outlet(message.text)
                _sent(kind, t_poll)
        except OSError:  # the peer is gone (a server may raise): its reader sees the disconnect
            self._gone = True
            queue.clear()
        finally:
            self.sending_since = None
            self._drainer = None
            if not queue and self._queue is queue:
                self._queue = None  # an idle connection keeps no deque (~0.6 KiB)

    def stalled(self, now: float) -> bool:
        """Drop the connection (``send_timeout``) when the send in progress was handed to the
        server ``send_timeout`` seconds or more before ``now`` (loop time); True when dropped."""
        since = self.sending_since
        if since is None or now - since < self.send_timeout or self.drop_reason is not None:
            return False
        self.drop("send_timeout")  # a dead or stalled peer
        return True

    def deliver(self, frame: Frame) -> None:
        """A broadcast frame of one of the client's channels."""
        sub = self.subs.get(frame.channel)
        if sub is None:
            return
        if not sub.ready:
            if len(sub.held) >= self.max_queue:
                self.drop("slow")
            else:
                sub.held.append(frame)
            return
        if not isinstance(frame, BarFrame):
            self._put("status", frame.polled_at, frame)
            return
        if frame.seq <= sub.last_seq or not self._fresh(sub, frame):
            return
        sub.last_seq = frame.seq
        self._put("bar", frame.polled_at, frame)

    @staticmethod
    def _fresh(sub: Subscription, frame: BarFrame) -> bool:
        """True when ``frame`` tells the client something newer; notes it as sent."""
        ts = frame.ts
        if frame.revised:
            return ts <= sub.last_ts  # a bar the client has, corrected
        # A second poller (a hand-over, a split brain) may send a bucket's final bar again, with
        # values fetched later: closed: true goes once per bucket.
        if ts < sub.last_ts or ts <= sub.closed_ts or (frame.bar, frame.closed) == sub.last:
            return False
        if ts == sub.snapshot_ts and frame.fetched_at < sub.snapshot_at:
            return False  # perhaps fetched before the snapshot: maybe older than what it shows
        sub.last_ts, sub.last = ts, (frame.bar, frame.closed)
        if frame.closed:
            sub.closed_ts = ts
        return True

    def hold(self, channel: str) -> Subscription:
        """Start (or restart) a subscription whose snapshot is being fetched."""
        old = self.subs.get(channel)
        sub = self.subs[channel] = Subscription()
        if old is not None:
            sub.scope = old.scope  # a resync keeps its reference to the channel
        return sub

    def ready(self, channel: str, bars: list[Bar], fetched_at: float) -> None:
        """The snapshot (``bars``, ready at ``fetched_at``) is queued: replay the frames held
        meanwhile."""
        sub = self.subs.get(channel)
        if sub is None:
            return
        sub.ready, sub.snapshot_at = True, fetched_at
        if bars:
            sub.last_ts = sub.snapshot_ts = int(bars[-1][0])
            sub.last = (bars[-1], False)
        held, sub.held = sub.held, []
        for frame in held:
            self.deliver(frame)

    # --- Ending --------------------------------------------------------------------------------
    def drop(self, reason: str, code: int = CLOSE_SLOW) -> None:
        """End the connection from the server side (counted by ``reason``): what waits is not
        sent, and the block of ``until_dropped`` is interrupted."""
        if self.drop_reason is not None:
            return
        self.drop_reason, self.close_code = reason, code
        WS_CLIENTS_DROPPED.labels(reason).inc()
        if self._queue is not None:
            self._queue.clear()
        self._replies = 0
        drainer = self._drainer
        if drainer is not None and drainer is not asyncio.current_task():
            drainer.cancel()
        if self._deadline is not None:
            self._deadline.reschedule(-1.0)  # at once

    @asynccontextmanager
    async def until_dropped(self) -> AsyncIterator[None]:
        """Run the block until it ends or the connection is dropped (which interrupts it)."""
        try:
            async with asyncio.timeout(None) as deadline:
                self._deadline = deadline
                if self.drop_reason is not None:
                    deadline.reschedule(-1.0)
                yield
        except TimeoutError:
            if self.drop_reason is None:
                raise
        finally:
            self._deadline = None

    async def close(self) -> None:
        """Stop sending (the drain task ends)."""
        drainer = self._drainer
        if drainer is not None:
            drainer.cancel()
            await asyncio.wait([drainer])

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0


_FRAMES_SENT: dict[str, Any] = {}


def _sent(kind: str, t_poll: float | None) -> None:
    counter = _FRAMES_SENT.get(kind)
    if counter is None:
        counter = _FRAMES_SENT[kind] = WS_FRAMES_SENT.labels(kind)
    counter.inc()
    if t_poll is not None:
        WS_FANOUT_LATENCY.observe(max(0.0, time.time() - t_poll))
