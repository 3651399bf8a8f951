"""Commits: a poller's bar frames, numbered, published and saved with its state in one step, and
the commits of every channel ready at the same moment in one backend round trip.

A stream's bars of one minute all change at the same instant: 100 channels each reserving a
``seq``, publishing and saving their state one round trip after another made the last channel
wait for 300 round trips. Here each commit is queued; one flusher sends everything queued as one
``Backend.commit`` (one Lua script on Redis), and while it waits for the answer the next burst
queues up (group commit). Per channel, atomically on the backend:

- **lease fence**: nothing is published unless the channel's lease is this poller's (a free
  lease is taken again; one held by another instance means ``LeaseLost``: the poller stops);
- **seq**: the frames are numbered after the poller's own ``seq`` (optimistic, so one round trip);
  when the channel's counter is ahead (a previous holder published after the state this poller
  restored) nothing is published and the commit is numbered again after the counter. A ``seq`` is
  never given twice, kill -9 and hand-over included;
- **state**: saved in the same step as the frames it describes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from services.hub.backends import SEQ_KEY, CommitRecord
from services.hub.broadcast import Lease, stop_task
from services.hub.frames import BarFrame
from services.hub.state import STATE_TTL_SECONDS, PollerState, StateStore

log = logging.getLogger(__name__)
#: Topic of a channel's frames, ``<prefix>:ws:bars:<channel>`` on Redis.
BARS = "ws:bars:"
#: Renumbering rounds of one commit before it fails (one is a hand-over; more means a bug).
MAX_ROUNDS = 4


class LeaseLost(Exception):
    """Another instance holds the channel's lease: this poller must stop (nothing was published)."""


@dataclass
class Commit:
    """One publish of a channel: ``frames`` (their ``seq`` is assigned here) and the ``state``
    they leave, whose ``seq`` is the number before them and becomes the last one."""

    channel: str
    frames: list[BarFrame]
    state: PollerState
    lease: Lease | None = None

    def record(self) -> CommitRecord:
        floor, s = self.state.seq, self.state
        self.frames = [dataclasses.replace(f, seq=floor + n) for n, f in enumerate(self.frames, 1)]
        s.seq = floor + len(self.frames)
        try:
            blob = s.dump()
        finally:
            s.seq = floor
        lease = None if self.lease is None else (self.lease.name, self.lease.owner,
                                                  self.lease.ttl_ms)
        return CommitRecord(
            topic=BARS + self.channel, seq_key=SEQ_KEY + self.channel,
            state_key=StateStore.key(self.channel), state=blob, state_ttl=STATE_TTL_SECONDS,
            floor=floor, payloads=[f.wire() for f in self.frames], lease=lease)


class Commits:
    """Group commit of the pollers of this instance over the store's backend (module)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._queue: list[tuple[Commit, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Backend round trips and commits sent (``batches``/``commits``: the mean burst).
        self.batches = 0
        self.commits = 0

    async def commit(self, item: Commit) -> None:
        """Number, publish and save ``item``; raises ``LeaseLost`` when another instance holds
        the channel's lease. On return ``item.state.seq`` is the last number given."""
        if not item.frames:
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="ws-commits")
        await done

    async def close(self) -> None:
        """Stop the flusher (commits still queued fail with ``CancelledError``)."""
        if self._flusher is not None:
            await stop_task(self._flusher)
        for _, done in self._queue:
            done.cancel()
        self._queue = []

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                for _, done in batch:
                    done.cancel()
                raise
            except Exception as exc:  # both backends failed, or a bug: every waiting poller gets it
                log.error("committing %d channels failed", len(batch), exc_info=exc)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)

    async def _send(self, batch: list[tuple[Commit, asyncio.Future[None]]]) -> None:
        for _ in range(MAX_ROUNDS):
            batch = await self._round(batch)
            if not batch:
                return
        raise RuntimeError(f"seq of {batch[0][0].channel} kept moving while committing")

    async def _round(self, batch: list[tuple[Commit, asyncio.Future[None]]]
                     ) -> list[tuple[Commit, asyncio.Future[None]]]:
        """One backend round trip for ``batch``; returns the commits to number again."""
        records = [item.record() for item, _ in batch]
        results = await self.store.broadcast.run(lambda b: b.commit(records))
        self.batches += 1
        self.commits += len(batch)
        again = []
        for (item, done), result in zip(batch, results, strict=True):
            if result < 0:
                if not done.done():
                    done.set_exception(LeaseLost(item.channel))
            elif result > 0:  # the counter is ahead of the state: number after it
                log.info("seq of %s continues after %d (counter ahead of the state)",
                         item.channel, result)
                item.state.seq = result
                again.append((item, done))
            else:
                item.state.seq += len(item.frames)
                self.store.remember(item.channel, item.state)
                if not done.done():
                    done.set_result(None)
        return again
