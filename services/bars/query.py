"""The query and answer types of ``GET /ohlcv`` (and WebSocket snapshots).

Public names (stable): ``BarQuery``, ``BarAnswer`` (also importable from
``services.bars.orchestrator``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from core.timeframes import Bar
from core.types import Series


@dataclass(frozen=True)
class BarQuery:
    """Bars of ``series`` in ``timeframe``: from ``start`` (a page of ``limit``) or the latest
    ``limit`` up to ``end``."""

    series: Series
    timeframe: str
    start: int | None
    end: int | None
    limit: int


@dataclass
class BarAnswer:
    """An answer: its bars, ``partial`` (the last bar is forming), the ``next`` page and where it
    came from."""

    #: The bars; may be None when the answer came from the cache as JSON (see ``bars``).
    raw_bars: list[Bar] | None
    partial: bool
    next: int | None
    sources: list[str] = field(default_factory=list)
    #: True when every bucket of the range has closed (the answer can carry an ETag).
    closed: bool = False
    #: True when some of the range could not be fetched (budget or outage); see ``backfill_job``.
    incomplete: bool = False
    backfill_job: str | None = None
    raw_json: str | None = None
    #: ``[start, end)`` of the query's own window (before any widening), set by ``get_bars``.
    span: tuple[int, int] | None = None

    @property
    def bars(self) -> list[Bar]:
        if self.raw_bars is None:
            self.raw_bars = json.loads(self.raw_json or "[]")
        return self.raw_bars

    @bars.setter
    def bars(self, value: list[Bar]) -> None:
        self.raw_bars, self.raw_json = value, None

    def bars_json(self) -> str:
        """The bars as compact JSON (cached answers are passed through without re-encoding)."""
        if self.raw_json is None:
            self.raw_json = json.dumps(self.bars, separators=(",", ":"))
        return self.raw_json
