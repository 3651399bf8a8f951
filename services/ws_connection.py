"""One WebSocket client: its subscriptions and a bounded send queue drained by one sender.

Frames are queued as pre-encoded text, so fan-out costs one append per client. When the queue is
full the client is not keeping up: it is dropped (``drop_reason`` ``slow``, close code 1013) and the
server's memory stays bounded. A frame whose write has not completed within ``send_timeout``
seconds means a dead or stalled peer (``send_timeout``). Per channel, a frame older than the
newest ``ts`` the client has seen is skipped, so ``ts`` never goes backwards for the client even
across a snapshot, a hand-over between instances or a split brain.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from core.metrics import WS_CLIENTS_DROPPED, WS_FANOUT_LATENCY, WS_FRAMES_SENT

Send = Callable[[str], Awaitable[None]]
#: Close codes: 1013 "try again later" for clients too slow for their stream, 1001 at shutdown.
CLOSE_SLOW = 1013
CLOSE_GOING_AWAY = 1001
#: How an encoded closed ``bar`` frame ends (frames are encoded with compact separators).
CLOSED_SUFFIX = '"closed":true}'


@dataclass
class Subscription:
    """A connection's view of one channel."""

    #: Newest bar ``ts`` sent on this channel (-1: none yet).
    last_ts: int = -1
    #: Newest bucket sent with ``closed: true`` (-1: none): nothing of it is sent again.
    closed_ts: int = -1
    #: False until the snapshot is queued; frames arriving before are held, then replayed.
    ready: bool = False
    #: The last broadcast frame queued (a frame replayed twice is sent once).
    last_text: str = ""
    held: list[tuple[int, float, str]] = field(default_factory=list)


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
        self._wake = asyncio.Event()
        self._send_started: float | None = None

    # --- Queueing ------------------------------------------------------------------------------
    def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue a reply frame (``subscribed``, ``snapshot``, ``pong``, ``error``...)."""
        self._enqueue(str(frame["type"]), None, json.dumps(frame, separators=(",", ":")))

    def _enqueue(self, kind: str, t_poll: float | None, text: str) -> None:
        if self.drop_reason is not None:
            return
        if len(self._queue) >= self.max_queue:
            self.drop("slow")
            return
        self._queue.append((kind, t_poll, text))
        self._wake.set()

    def deliver(self, channel: str, ts: int, t_poll: float, text: str) -> None:
        """A broadcast frame of ``channel`` (``ts`` -1 for a status frame)."""
        sub = self.subs.get(channel)
        if sub is None:
            return
        if not sub.ready:
            if len(sub.held) >= self.max_queue:
                self.drop("slow")
            else:
                sub.held.append((ts, t_poll, text))
            return
        if ts >= 0:
            # A second worker (a hand-over, a split brain) may send a bucket's final bar again,
            # with values fetched later: API.md sends ``closed: true`` once per bucket.
            if ts < sub.last_ts or ts <= sub.closed_ts or text == sub.last_text:
                return
            sub.last_ts = ts
            if text.endswith(CLOSED_SUFFIX):
                sub.closed_ts = ts
        sub.last_text = text
        self._enqueue("bar" if ts >= 0 else "status", t_poll, text)

    def hold(self, channel: str) -> Subscription:
        """Start (or restart) a subscription whose snapshot is being fetched."""
        sub = self.subs[channel] = Subscription()
        return sub

    def ready(self, channel: str, last_ts: int, last_text: str = "") -> None:
        """The snapshot (ending at ``last_ts``, its last bar encoded as ``last_text``) is queued:
        replay the frames held meanwhile."""
        sub = self.subs.get(channel)
        if sub is None:
            return
        sub.ready, sub.last_ts, sub.last_text = True, max(sub.last_ts, last_ts), last_text
        held, sub.held = sub.held, []
        for ts, t_poll, text in held:
            self.deliver(channel, ts, t_poll, text)

    # --- Ending --------------------------------------------------------------------------------
    def drop(self, reason: str, code: int = CLOSE_SLOW) -> None:
        """End the connection from the server side (counted by ``reason``)."""
        if self.drop_reason is not None:
            return
        self.drop_reason, self.close_code = reason, code
        WS_CLIENTS_DROPPED.labels(reason).inc()
        self._queue.clear()
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
            self._send_started = time.monotonic()
            await self._send(text)
            self._send_started = None
            WS_FRAMES_SENT.labels(kind).inc()
            if t_poll is not None:
                WS_FANOUT_LATENCY.observe(max(0.0, time.time() - t_poll))
