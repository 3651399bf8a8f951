"""What a channel's poller remembers between polls and across a hand-over to another instance.

The state is saved after every poll that published something, under ``ws:state:<channel>`` of
the hub's backend (Redis while it answers) and in this process; the newer of the two (higher
``seq``) is loaded, so neither a hand-over nor a Redis outage makes a poller repeat a ``seq`` or
send ``ts`` backwards. ``GET /channels`` reads the same record (state, last bar, lag).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from core.timeframes import Bar
from services.bus.broadcast import Broadcast

log = logging.getLogger(__name__)
#: Saved states outlive a poller by this much (a channel unused longer starts afresh).
STATE_TTL_SECONDS = 3600


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bar(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 6
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


@dataclass
class PollerState:
    """A poller's view of its channel."""

    #: Open time of the newest bar published, of the newest closed one, and the forming bar.
    last_ts: int | None = None
    closed_ts: int | None = None
    last_bar: Bar | None = None
    #: The channel's newest ``seq`` (bar frames, cluster-wide).
    seq: int = 0
    #: Closed bars published lately, for revisions (bars of the revision window only).
    recent: list[Bar] = field(default_factory=list)
    #: ``live`` or ``stale``; the feed (``poll`` here; streams plug in later).
    state: str = "live"
    feed: str = "poll"
    #: Wall time (ms) up to which the channel's data is known, and the lag of the last publish.
    fresh_at: int | None = None
    lag_ms: int | None = None

    @classmethod
    def parse(cls, raw: str | None) -> PollerState | None:
        """The state in ``raw``, or None when ``raw`` is missing or not a poller state."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:  # not JSON (a foreign or truncated value): must not stop the poller
            log.warning("a channel state is not JSON; ignored")
            return None
        if not (isinstance(data, dict)
                and all(data.get(k) is None or _is_int(data[k])
                        for k in ("last_ts", "closed_ts", "fresh_at", "lag_ms"))
                and (data.get("last_bar") is None or _is_bar(data["last_bar"]))
                and _is_int(data.get("seq", 0))
                and isinstance(data.get("recent", []), list)
                and all(_is_bar(b) for b in data.get("recent", []))):
            log.warning("a channel state is not a poller state; ignored")
            return None
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def dump(self) -> str:
        # not dataclasses.asdict: its deep copy was most of a commit's cost (a burst has 100)
        return json.dumps({name: getattr(self, name) for name in self.__dataclass_fields__},
                          separators=(",", ":"))


class StateStore:
    """Channel states on the hub's backend, with a copy in this process."""

    def __init__(self, broadcast: Broadcast) -> None:
        self.broadcast = broadcast
        self._local: dict[str, PollerState] = {}

    @staticmethod
    def key(channel: str) -> str:
        return f"ws:state:{channel}"

    async def load(self, channel: str) -> PollerState | None:
        """The newest saved state: the backend's or this process's, whichever has the higher seq."""
        shared = PollerState.parse(await self.broadcast.run(lambda b: b.load(self.key(channel))))
        local = self._local.get(channel)
        if shared is None or (local is not None and local.seq > shared.seq):
            return local
        return shared

    def remember(self, channel: str, state: PollerState) -> None:
        """Remember ``state`` in this process (``GroupCommit`` saved it on the backend)."""
        self._local[channel] = state

    async def save(self, channel: str, state: PollerState) -> None:
        """Remember ``state`` here and on the backend."""
        self.remember(channel, state)
        blob = state.dump()
        await self.broadcast.run(lambda b: b.save(self.key(channel), blob, STATE_TTL_SECONDS))
