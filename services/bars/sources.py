"""The data sources the orchestrator chains, and the types of the chain.

Public names (stable): ``Window``, ``Fill``, ``DataSource``, ``StorageSource``, ``Cache1mSource``,
``BarWriter``, ``RevisionSink``, ``Range``, ``LEDGER_SAFETY_MS``.

Each ``DataSource`` answers one question, ``fill(window, got)``: given what the sources before it
found (``got``: the window's bars if some source could answer, the 1m ranges still missing and the
names of the sources used), what does it add? It returns; no source calls another. The
orchestrator loops over its chain and writes what was fetched through (``Fill.fetched``):
- storage up: ``StorageSource`` (the gap ledger says which minutes were never fetched; a window
  with none is answered from storage) then ``ProviderSource`` (``services.bars.provider_source``:
  fetches what is missing);
- storage down: ``Cache1mSource`` (the closed 1m bars of the window, when cached in full) then
  ``ProviderSource`` without storage.

Cache and database failures surface as ``DataSourceError`` (the orchestrator then runs the chain
without storage); provider failures are the plugins' own ``PluginError`` classes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from core.metrics import observe_query
from core.ports import Database
from core.timeframes import MINUTE_MS, Bar, resample, tf_ms
from core.types import Series, merge_ranges
from plugins.base import Capabilities
from services.bars import aggregates, storage
from services.bars.cache import BestEffortCache

log = logging.getLogger(__name__)
#: Minutes this close to now are refetched every time, never recorded complete in the ledger.
LEDGER_SAFETY_MS = 2 * MINUTE_MS
Range = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """The buckets [start, end) of one query of ``timeframe``, seen at ``now`` (ms), with the
    bounds every source reads, worked out once by the orchestrator (plain values: a source
    reads them without calling back)."""

    series: Series
    timeframe: str
    #: Open time of the window's first bucket (ms).
    start: int
    #: End of the window's last bucket (ms, exclusive): it may lie past ``now``.
    end: int
    now: int
    #: Open time of the forming minute.
    current_min: int
    #: End of the window's closed minutes.
    closed_end: int
    #: End of what a provider is asked for: the forming minute included.
    fetch_end: int
    #: End of the minutes settled enough to be recorded complete in the ledger.
    safe_end: int
    #: Every bucket of the window has closed (an answer of it can carry an ETag).
    closed: bool


@dataclass
class Fill:
    """What the chain has found so far for a window."""

    #: The window's bars (of its timeframe), once a source can answer; None before.
    bars: list[Bar] | None
    #: 1m ranges still missing (to be fetched by the next source).
    missing: list[Range]
    #: Names of the sources used, for ``X-Data-Source``.
    names: list[str] = field(default_factory=list)
    #: True when some of the window could not be fetched (budget, history depth or outage).
    incomplete: bool = False
    #: Closed 1m ranges left to a backfill job (the orchestrator's ``on_missing`` hook).
    backfill: list[Range] = field(default_factory=list)
    #: 1m bars a provider fetched, one run per range (the forming minute included), for the
    #: orchestrator to write through; None when no source fetched 1m bars.
    fetched: list[list[Bar]] | None = None
    #: 1m ranges the fetch covered that are settled enough to record complete in the ledger.
    complete: list[Range] = field(default_factory=list)
    #: A provider outage kept while something else may answer; raised when nothing does.
    outage: Exception | None = None


class DataSource(ABC):
    """One link of the orchestrator's chain."""

    @abstractmethod
    async def fill(self, w: Window, got: Fill) -> Fill:
        """``got`` completed with what this source has: found bars, still missing, its name."""


class RevisionSink(Protocol):
    """Told about stored bars whose values a write changed (``services.bus.revisions.Revisions``)."""

    async def announce(self, series: Series, bars: Sequence[Bar]) -> None: ...


async def _write(conn: Any, mode: str, series: Series, bars: Sequence[Sequence[float]],
                 complete: Sequence[Range], revisions: RevisionSink | None = None) -> int:
    """Closed 1m bars and the ranges now known complete in one transaction, then a refresh of
    the aggregates they touch; stored bars whose values changed go to ``revisions``."""
    if not bars and not complete:
        return 0
    revised: list[Bar] | None = [] if revisions is not None else None
    with observe_query("upsert_1m_bars"):
        n = await storage.upsert_1m_bars(conn, series, bars, complete, revised)
    if bars:
        with observe_query("refresh_aggregates"):
            await aggregates.refresh_window(conn, mode, int(bars[0][0]), int(bars[-1][0]) + MINUTE_MS)
    if revised and revisions is not None:
        await revisions.announce(series, revised)
    return n


class BarWriter:
    """Writes fetched closed 1m bars (and the ranges now known complete) atomically (the live
    pollers' storage)."""

    def __init__(self, db: Database, revisions: RevisionSink | None = None) -> None:
        self.db, self.revisions = db, revisions

    async def write(
        self, series: Series, bars: Sequence[Sequence[float]], complete: Sequence[tuple[int, int]]
    ) -> int:
        """Write ``bars`` and record ``complete``; returns the rows written."""
        if not bars and not complete:
            return 0
        async with self.db.acquire() as conn:
            return await _write(conn, self.db.mode, series, bars, complete, self.revisions)


class StorageSource(DataSource):
    """Stored bars and the gap ledger; the target of the orchestrator's write-through. Each
    method uses one pooled connection (one acquire, one reset)."""

    def __init__(self, db: Database, revisions: RevisionSink | None = None) -> None:
        self.db, self.revisions = db, revisions

    async def fill(self, w: Window, got: Fill) -> Fill:
        """The window from storage when the ledger lacks nothing; else the missing minutes (and
        always the last ``LEDGER_SAFETY_MS``, which are never recorded complete)."""
        recent = [(w.safe_end, w.fetch_end)] if w.fetch_end > w.safe_end else []
        async with self.db.acquire() as conn:
            with observe_query("missing_ranges"):
                missing = await storage.missing_ranges(conn, w.series, w.start, w.safe_end)
            names = [] if missing == [(w.start, w.safe_end)] and w.safe_end > w.start else [self.name(w)]
            to_fetch = merge_ranges(missing + recent)
            if to_fetch:
                return replace(got, missing=to_fetch, names=names)
            return replace(got, bars=await self._read(conn, w), missing=[], names=names)

    def name(self, w: Window) -> str:
        """``aggregate`` when a continuous aggregate answers (directly or regrouped), else
        ``database`` (the 1m table)."""
        if self.db.mode not in aggregates.MODES:
            return "database"
        relation, _ = aggregates.source_of(self.db.mode, w.timeframe)
        return "database" if relation == "ohlcv_1m" else "aggregate"

    async def write_and_read(self, w: Window, bars: Sequence[Sequence[float]],
                             complete: Sequence[Range]) -> list[Bar]:
        """Write closed 1m bars (and the ranges now complete), then read the window back."""
        async with self.db.acquire() as conn:
            await _write(conn, self.db.mode, w.series, bars, complete, self.revisions)
            return await self._read(conn, w)

    async def read(self, w: Window) -> list[Bar]:
        """The window's closed bars as stored (no provider)."""
        async with self.db.acquire() as conn:
            return await self._read(conn, w)

    async def _read(self, conn: Any, w: Window) -> list[Bar]:
        if w.closed_end <= w.start:
            return []
        with observe_query("select_bars"):
            return await aggregates.select_bars(
                conn, self.db.mode, w.series, w.timeframe, w.start, w.closed_end,
                (w.end - w.start) // tf_ms(w.timeframe))


class Cache1mSource(DataSource):
    """Without storage: the window's closed minutes from the 1m cache when it holds all of them
    (in a market that trades around the clock, where a missing minute is a hole)."""

    def __init__(self, cache: BestEffortCache,
                 capabilities: Callable[[Series], Awaitable[Capabilities]]) -> None:
        self.cache, self.capabilities = cache, capabilities

    async def fill(self, w: Window, got: Fill) -> Fill:
        """Cached closed minutes resampled, with only the forming minute left to fetch."""
        cached = await self.cache.get_1m(w.series, w.start, w.closed_end)
        if not cached or len(cached) != (w.closed_end - w.start) // MINUTE_MS:
            return got
        if not (await self.capabilities(w.series)).continuous:
            return got
        recent = [(w.closed_end, w.fetch_end)] if w.fetch_end > w.closed_end else []
        return replace(got, bars=resample(cached, w.timeframe), missing=recent, names=["cache"])
