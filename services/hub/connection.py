"""One WebSocket client: its subscriptions and a bounded send queue drained by one sender.

Frames are queued as the text their frame object encoded once, so fan-out costs one append per
client. When the queue is full the client is not keeping up: it is dropped with close code 1013,
counted as ``flood`` when most of what waits are answers to its own messages, else ``slow``; the
server's memory stays bounded. A frame whose write has not completed within ``send_timeout``
seconds means a dead or stalled peer (``send_timeout``). Per channel a client is never sent a bar
older than what it has (the snapshot included), except a revision.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from core.metrics import WS_CLIENTS_DROPPED, WS_FANOUT_LATENCY, WS_FRAMES_SENT
from core.timeframes import Bar
from services.hub.frames import BarFrame, Frame

Send = Callable[[str], Awaitable[None]]
#: Close codes: 1013 "try again later" for clients too slow for their stream, 1001 at shutdown.
CLOSE_SLOW = 1013
CLOSE_GOING_AWAY = 1001


@dataclass
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
    #: Holds the hub's reference to the channel; closing it leaves the channel.
    scope: AsyncExitStack = field(default_factory=AsyncExitStack)


class Connection:
    """A client connection's state; the blueprint runs ``run_sender`` and waits on ``done``."""

    def __init__(self, send: Send, *, max_queue: int, send_timeout: float) -> None:
        self._send = send
        self.max_queue = max_queue
        self.send_timeout = send_timeout
        self.subs: dict[str, Subscription] = {}
        self.drop_reason: str | None = None
        self.close_code = CLOSE_SLOW
        self.done = asyncio.Event()
        self._queue: deque[tuple[str, float | None, str]] = deque()
        #: Answers to the client's own messages waiting in the queue.
        self._replies = 0
        self._wake = asyncio.Event()
        self._send_started: float | None = None

    # --- Queueing ------------------------------------------------------------------------------
    def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue a reply frame (``subscribed``, ``snapshot``, ``pong``, ``error``...)."""
        if self._enqueue(str(frame["type"]), None, json.dumps(frame, separators=(",", ":"))):
            self._replies += 1

    def _enqueue(self, kind: str, t_poll: float | None, text: str) -> bool:
        if self.drop_reason is not None:
            return False
        if len(self._queue) >= self.max_queue:
            # Most of the backlog answers the client's own messages: it floods, it is not slow.
            self.drop("flood" if 2 * self._replies > len(self._queue) else "slow")
            return False
        self._queue.append((kind, t_poll, text))
        self._wake.set()
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
            self._enqueue("status", frame.polled_at, frame.text)
            return
        if frame.seq <= sub.last_seq or not self._fresh(sub, frame):
            return
        sub.last_seq = frame.seq
        self._enqueue("bar", frame.polled_at, frame.text)

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
        """End the connection from the server side (counted by ``reason``)."""
        if self.drop_reason is not None:
            return
        self.drop_reason, self.close_code = reason, code
        WS_CLIENTS_DROPPED.labels(reason).inc()
        self._queue.clear()
        self._replies = 0
        self.done.set()
        self._wake.set()

    def stalled(self) -> bool:
        """True when one frame has been waiting on the socket longer than ``send_timeout``."""
        started = self._send_started
        return started is not None and time.monotonic() - started > self.send_timeout

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run_sender(self) -> None:
        """Write queued frames in order until the connection is dropped."""
        queue = self._queue
        while self.drop_reason is None:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            kind, t_poll, text = queue.popleft()
            if t_poll is None:
                self._replies -= 1
            self._send_started = time.monotonic()
            await self._send(text)
            self._send_started = None
            WS_FRAMES_SENT.labels(kind).inc()
            if t_poll is not None:
                WS_FANOUT_LATENCY.observe(max(0.0, time.time() - t_poll))
