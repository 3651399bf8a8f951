"""Revisions of stored closed 1m bars, made known everywhere they are held.

Whoever writes 1m bars (the REST path's provider source, a live poller, a backfill) learns from
storage which stored bars changed value (``storage.upsert_1m_bars(..., revised=...)``) and hands
them to ``Revisions.announce``: the 1m cache gets the new values, every cached answer holding one
of them is dropped (its next answer, and its ETag, carry the new values), and each revision is
published on the ``revisions`` topic, ``<REDIS_PREFIX>:revisions`` on Redis, as JSON
``{"series": "market:provider:symbol", "ts": <1m bar ms>, "bar": [ts, o, h, l, c, v]}``: live
pollers publish the bucket again with ``revised: true``, in-process caches drop their entries.
The aggregates over the bars are refreshed by the writer, as for any write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from core.errors import DataSourceError
from core.metrics import BAR_REVISIONS
from core.timeframes import Bar, round_bar
from core.types import Series
from services.bars.cache import Cache
from services.bus.broadcast import Broadcast

log = logging.getLogger(__name__)
#: Topic of revised closed 1m bars, ``<REDIS_PREFIX>:revisions`` on Redis (see ``Revisions``).
REVISIONS = "revisions"


class Revisions:
    """Announces revised 1m bars (see the module docstring)."""

    def __init__(self, broadcast: Broadcast, cache: Cache | None) -> None:
        self.broadcast, self.cache = broadcast, cache

    async def announce(self, series: Series, bars: Sequence[Bar]) -> None:
        """Update the caches for the revised ``bars`` of ``series`` and publish each revision."""
        if not bars:
            return
        BAR_REVISIONS.labels(series.provider).inc(len(bars))
        log.info("%d stored bars of %s revised, first at %s", len(bars), series.key(), bars[0][0])
        if self.cache is not None:
            try:
                for bar in bars:
                    await self.cache.store_1m_bars(series, [bar])
                await self.cache.drop_answers(series, [int(b[0]) for b in bars])
            except DataSourceError as exc:  # the answers expire by their TTL; still announce
                log.warning("caches not updated for revisions of %s: %s", series.key(), exc.details)
        for bar in bars:
            clean = round_bar(bar)
            payload = json.dumps({"series": series.key(), "ts": clean[0], "bar": clean},
                                 separators=(",", ":"))
            await self.broadcast.publish(REVISIONS, payload)
