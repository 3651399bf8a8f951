"""A poller's bar frames, numbered, published and saved with its state in one step (a ``Commit``),
and the commits of every channel ready at the same moment in one backend round trip
(``GroupCommit``).

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

import dataclasses
import logging
from dataclasses import dataclass

from services.bus.backends import SEQ_KEY, CommitRecord
from services.bus.batch import CallBatcher
from services.bus.broadcast import Lease, LeaseLost
from services.live.frames import BarFrame
from services.live.state import STATE_TTL_SECONDS, PollerState, StateStore

log = logging.getLogger(__name__)
#: Topic of a channel's frames, ``<prefix>:ws:bars:<channel>`` on Redis.
BARS = "ws:bars:"
#: Renumbering rounds of one commit before it fails (one is a hand-over; more means a bug).
MAX_ROUNDS = 4


@dataclass
class Commit:
    """One publish of a channel: ``frames`` (their ``seq`` is assigned here) and the ``state``
    they leave, whose ``seq`` is the number before them and becomes the last one."""

    channel: str
    frames: list[BarFrame]
    state: PollerState
    lease: Lease | None = None
    #: False for a part of a catch-up but the last: the state (which holds the whole catch-up)
    #: is saved with the last part only, so a holder killed in between leaves none of it done.
    save: bool = True

    def record(self) -> CommitRecord:
        floor, s = self.state.seq, self.state
        self.frames = [dataclasses.replace(f, seq=floor + n) for n, f in enumerate(self.frames, 1)]
        s.seq = floor + len(self.frames)
        try:
            blob = s.dump() if self.save else ""
        finally:
            s.seq = floor
        lease = None if self.lease is None else (self.lease.name, self.lease.owner,
                                                  self.lease.ttl_ms)
        return CommitRecord(
            topic=BARS + self.channel, seq_key=SEQ_KEY + self.channel,
            state_key=StateStore.key(self.channel), state=blob, state_ttl=STATE_TTL_SECONDS,
            floor=floor, payloads=[f.wire() for f in self.frames], lease=lease)


class GroupCommit:
    """The commits of this instance's pollers, grouped: ``await commit(item)`` queues ``item`` and
    returns once it went out with the others queued meanwhile, in one backend round trip."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.batched = CallBatcher(self._send, "ws-commits")

    async def commit(self, item: Commit) -> None:
        """Number, publish and save ``item``; raises ``LeaseLost`` when another instance holds
        the channel's lease. On return ``item.state.seq`` is the last number given."""
        if item.frames and not await self.batched(item):
            raise LeaseLost(item.channel)

    async def close(self) -> None:
        """Stop the flusher (commits still queued are cancelled)."""
        await self.batched.close()

    async def _send(self, items: list[Commit]) -> list[bool]:
        """Commit ``items`` in one round trip (more when a counter is ahead); per item True when
        committed, False when the lease is another instance's."""
        held = dict.fromkeys(map(id, items), True)
        for _ in range(MAX_ROUNDS):
            results = await self._round([item.record() for item in items])
            again = []
            for item, result in zip(items, results, strict=True):
                if result < 0:
                    held[id(item)] = False
                elif result > 0:  # the counter is ahead of the state: number after it
                    log.info("seq of %s continues after %d (counter ahead of the state)",
                             item.channel, result)
                    item.state.seq = result
                    again.append(item)
                else:
                    item.state.seq += len(item.frames)
                    if item.save:
                        self.store.remember(item.channel, item.state)
            if not again:
                return list(held.values())
            items = again
        raise RuntimeError(f"seq of {items[0].channel} kept moving while committing")

    async def _round(self, records: list[CommitRecord]) -> list[int]:
        return await self.store.broadcast.run(lambda b: b.commit(records))
