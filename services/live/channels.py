"""The live channels of the whole cluster, for ``GET /channels``.

Every instance records its channels and their local subscriber counts in the shared map
``ws:instances`` each third of the lease TTL; an instance silent for three TTLs is left out. The
poller state of each channel (``StateStore``) gives its feed, state, newest bar and lag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from services.bus.broadcast import stop_task
from services.live.hub import Hub
from services.live.state import StateStore

log = logging.getLogger(__name__)
INSTANCES = "ws:instances"


class ChannelsReport:
    """Publishes this instance's channels and reads the cluster's."""

    def __init__(self, hub: Hub, store: StateStore) -> None:
        self.hub, self.store = hub, store
        self.every = hub.settings.lease_ttl / 3
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ws-channels-report")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    def _local(self) -> dict[str, int]:
        return {name: entry.refs for name, entry in self.hub.channels.items()}

    async def _record(self) -> None:
        blob = json.dumps({"at": time.time(), "channels": self._local()})
        ttl = max(1, int(self.hub.settings.lease_ttl * 3))
        await self.hub.broadcast.run(lambda b: b.put_field(INSTANCES, self.hub.instance_id, blob, ttl))

    async def _run(self) -> None:
        while True:
            try:
                await self._record()
            except Exception as exc:  # a bug must not end the report: log and go on
                log.error("recording this instance's channels failed", exc_info=exc)
            await asyncio.sleep(self.every)

    async def channels(self) -> list[dict[str, Any]]:
        """One row per channel with subscribers (or in its grace period) on any instance."""
        raw = await self.hub.broadcast.run(lambda b: b.fields(INSTANCES))
        oldest = time.time() - 3 * self.hub.settings.lease_ttl
        counts: dict[str, int] = {}
        for instance, blob in raw.items():
            if instance == self.hub.instance_id:
                continue  # this instance's own counts are read live below
            try:
                record = json.loads(blob)
                if float(record["at"]) < oldest:
                    continue
                for name, refs in dict(record["channels"]).items():
                    counts[str(name)] = counts.get(str(name), 0) + int(refs)
            except (ValueError, KeyError, TypeError):
                log.warning("the channel record of instance %s is malformed; ignored", instance)
        for name, refs in self._local().items():
            counts[name] = counts.get(name, 0) + refs
        now_ms = int(time.time() * 1000)
        rows = []
        for name in sorted(counts):
            state = await self.store.load(name)
            row: dict[str, Any] = {"channel": name, "subscribers": counts[name], "feed": "poll",
                                   "state": "live", "last_bar_ts": None, "lag_ms": None}
            if state is not None:
                row.update(feed=state.feed, state=state.state, last_bar_ts=state.last_ts,
                           lag_ms=state.lag_ms)
                if state.state == "stale" and state.fresh_at is not None:
                    row["lag_ms"] = max(0, now_ms - state.fresh_at)
            rows.append(row)
        return rows
