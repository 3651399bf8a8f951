"""What a backfill's runner passes around: settings, progress, fetched chunks, the writers' turns.

Re-exported by ``services.backfill_chunks`` (its public names).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import AppError
from core.timeframes import Bar
from services.backfill_gaps import Chunk
from services.settings import setting


class LeaseLost(Exception):
    """Another runner owns the job now (our lease expired); stop working on it."""


class Parked(Exception):
    """The job's provider keeps failing (for ``BACKFILL_YIELD_AFTER`` seconds, or its breaker is
    open): the job gives up its runner slot and waits queued for ``retry_in`` seconds."""

    def __init__(self, cause: AppError, retry_in: float) -> None:
        super().__init__(str(cause))
        self.cause, self.retry_in = cause, retry_in


@dataclass
class Progress:
    """Running totals of one backfill, passed to the progress callback after every chunk."""

    chunks_total: int
    chunks_done: int = 0
    bars_written: int = 0
    calls: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Fetched:
    """One fetched chunk waiting for the writer: its closed bars as binary COPY rows
    (``storage.encode_rows``: no Python object per bar), their count and first and last ts, the
    bars themselves when recent enough for the 1m cache, and the calls it took."""

    chunk: Chunk
    rows: bytes
    count: int
    first: int
    last: int
    recent: list[Bar]
    calls: int


@dataclass(frozen=True)
class JobRef:
    id: str
    owner: str


@dataclass(frozen=True)
class BackfillSettings:
    """Backfill settings (``build(BackfillSettings, config)``; see config.py ``BACKFILL_*``)."""

    concurrency: int = setting("BACKFILL_CONCURRENCY", 4, int)
    patience: float = setting("BACKFILL_PATIENCE", 3600.0, float)
    yield_after: float = setting("BACKFILL_YIELD_AFTER", 30.0, float)
    retry_base: float = setting("BACKFILL_RETRY_BASE", 1.0, float)
    retry_max_wait: float = setting("BACKFILL_RETRY_MAX_WAIT", 60.0, float)
    write_cache: bool = setting("BACKFILL_WRITE_CACHE", True, bool)
    cache_days: float = setting("BACKFILL_CACHE_DAYS", 7.0, float)
    max_range_days: float = setting("BACKFILL_MAX_RANGE_DAYS", 3660.0, float)
    auto_max_days: float = setting("BACKFILL_AUTO_MAX_DAYS", 7.0, float)
    max_queued_per_client: int = setting("BACKFILL_MAX_QUEUED_PER_CLIENT", 10, int)

    @property
    def max_range_ms(self) -> int:
        return int(self.max_range_days * 86_400_000)


def readable(exc: BaseException) -> str:
    """The error text a failed job keeps."""
    if isinstance(exc, AppError):
        return f"{exc.code}: {exc.message}"
    return f"internal_error: {type(exc).__name__}: {exc}"


class CopyTurn:
    """A batch's turn to COPY into ``ohlcv_1m``: after the batch before it has had its own (or
    given it up), so COPYs run one at a time and in the order of their batches, while a batch's
    other round trips overlap the next one's COPY. ``async with turn:`` around the COPY; ``pass_on``
    when the batch ends without one (an upsert, a failed attempt)."""

    def __init__(self, before: CopyTurn | None = None) -> None:
        self._before, self._done = before, asyncio.Event()
        if before is None:
            self._done.set()  # the first turn: a predecessor that is done

    async def __aenter__(self) -> None:
        if self._before is not None:
            await self._before._done.wait()
            self._before = None  # no chain of every batch's turn kept alive

    async def __aexit__(self, *exc: object) -> None:
        self.pass_on()

    def pass_on(self) -> None:
        self._done.set()
