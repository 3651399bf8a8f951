"""Running backfill chunks: fetch through the provider-call path, write bars, ledger range and job
progress in one transaction, retry temporary errors with ``plugins.retry.RetryPolicy``.

Public names (stable): ``ChunkRunner``, ``BackfillSettings``, ``Progress``, ``ProgressCallback``,
``JobRef``, ``LeaseLost``, ``readable``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
from tenacity import RetryCallState

from core.errors import AppError, DataSourceError, RateLimitedPluginError
from core.metrics import BACKFILL_BARS, BACKFILL_CHUNK_FAILURES, BACKFILL_CHUNKS
from core.ports import Database
from core.timeframes import MINUTE_MS, Bar, now_ms
from core.types import Series, to_dt
from plugins.retry import RetryPolicy
from services import aggregates, storage
from services import backfill_jobs as jobs
from services.backfill_gaps import Chunk
from services.provider_source import PluginSource
from services.settings import setting
from services.sources import CacheSource, RevisionSink

log = logging.getLogger(__name__)
#: Calls one chunk may make while paging (a chunk normally needs one).
_CHUNK_CALL_BUDGET = 1_000


class LeaseLost(Exception):
    """Another runner owns the job now (our lease expired); stop working on it."""


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
class JobRef:
    id: str
    owner: str


@dataclass(frozen=True)
class BackfillSettings:
    """Backfill settings (``build(BackfillSettings, config)``; see config.py ``BACKFILL_*``)."""

    concurrency: int = setting("BACKFILL_CONCURRENCY", 4, int)
    patience: float = setting("BACKFILL_PATIENCE", 3600.0, float)
    retry_base: float = setting("BACKFILL_RETRY_BASE", 1.0, float)
    retry_max_wait: float = setting("BACKFILL_RETRY_MAX_WAIT", 60.0, float)
    write_cache: bool = setting("BACKFILL_WRITE_CACHE", True, bool)
    max_range_days: float = setting("BACKFILL_MAX_RANGE_DAYS", 3660.0, float)
    auto_max_days: float = setting("BACKFILL_AUTO_MAX_DAYS", 7.0, float)

    @property
    def max_range_ms(self) -> int:
        return int(self.max_range_days * 86_400_000)


def readable(exc: BaseException) -> str:
    """The error text a failed job keeps."""
    if isinstance(exc, AppError):
        return f"{exc.code}: {exc.message}"
    return f"internal_error: {type(exc).__name__}: {exc}"


class ChunkRunner:
    """Runs chunks of one backfill, ``BACKFILL_CONCURRENCY`` calls at a time per provider."""

    def __init__(self, plugins: PluginSource, db: Database, cache: CacheSource,
                 settings: BackfillSettings, revisions: RevisionSink | None = None) -> None:
        self.plugins, self.db, self.cache, self.settings = plugins, db, cache, settings
        self.revisions = revisions
        self.concurrency = max(1, settings.concurrency)
        #: Per-provider limit of concurrent upstream calls, shared by every backfill here.
        self._api_semaphore: dict[str, asyncio.Semaphore] = {}

    def _semaphore(self, provider: str) -> asyncio.Semaphore:
        sem = self._api_semaphore.get(provider)
        if sem is None:
            sem = self._api_semaphore[provider] = asyncio.Semaphore(self.concurrency)
        return sem

    async def run(
        self, series: Series, chunks: Sequence[Chunk], progress: Progress,
        job: JobRef | None, on_progress: ProgressCallback | None,
    ) -> None:
        queue = deque(chunks)

        async def worker() -> None:
            while queue:
                chunk = queue.popleft()
                written, calls = await self._run_chunk(series, chunk, job)
                progress.chunks_done += 1
                progress.bars_written += written
                progress.calls += calls
                if on_progress is not None:
                    on_progress(progress)

        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(min(self.concurrency, len(chunks))):
                    tg.create_task(worker(), name=f"backfill-worker-{i}")
        except ExceptionGroup as group:
            raise group.exceptions[0] from None

    async def _run_chunk(self, series: Series, chunk: Chunk, job: JobRef | None) -> tuple[int, int]:
        """Fetch and write one chunk; returns (bars written, calls made)."""

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            BACKFILL_CHUNK_FAILURES.labels(series.provider, "temporary").inc()
            # Being paced (our provider budget or the exchange's 429) is routine for big jobs.
            level = logging.INFO if isinstance(exc, RateLimitedPluginError) else logging.WARNING
            log.log(level, "backfill %s chunk %s: %s; retrying (attempt %d)", series.key(),
                    to_dt(chunk.start).isoformat(), exc, state.attempt_number)
            if job is not None and exc is not None:  # docs/api.md: a retrying job shows its last error
                await self._record_error(job, f"{readable(exc)} (chunk starting "
                                         f"{to_dt(chunk.start).isoformat()}; retrying)")

        async def once() -> tuple[int, int]:
            async with self._semaphore(series.provider):
                bars, calls, _ = await self.plugins.fetch(
                    series, "1m", chunk.start, chunk.end, _CHUNK_CALL_BUDGET)
            return await self._write(series, chunk, bars, job), calls

        policy = RetryPolicy(series.provider, max_wait=self.settings.retry_max_wait,
                             base_wait=self.settings.retry_base, patience=self.settings.patience)
        try:
            return await policy.call(once, before_sleep)
        except (AppError, asyncpg.PostgresError) as exc:
            BACKFILL_CHUNK_FAILURES.labels(series.provider, "permanent").inc()
            if isinstance(exc, AppError):
                exc.message = f"{exc.message} (chunk starting {to_dt(chunk.start).isoformat()})"
            raise

    async def _record_error(self, job: JobRef, error: str) -> None:
        try:
            async with self.db.acquire() as conn:
                await jobs.record_error(conn, job.id, job.owner, error)
        except (DataSourceError, asyncpg.PostgresError) as err:  # storage down: the log has it
            log.info("backfill job %s: could not record its error: %s", job.id, err)

    async def _write(
        self, series: Series, chunk: Chunk, bars: list[Bar], job: JobRef | None
    ) -> int:
        """Bars, the chunk's ledger range and the job's progress in one transaction."""
        now = now_ms()
        closed = [b for b in bars if chunk.start <= b[0] < chunk.end and b[0] + MINUTE_MS <= now]
        complete = [(chunk.start, chunk.complete_end)] if chunk.complete_end > chunk.start else []
        revised: list[Bar] = []  # stored bars this chunk changed: announced as revisions
        async with self.db.acquire() as conn:
            async with conn.transaction():
                written = await storage.upsert_1m_bars(conn, series, closed, complete, revised)
                if job is not None and not await jobs.add_progress(conn, job.id, job.owner, 1, written):
                    raise LeaseLost(job.id)
            if closed:
                await aggregates.refresh_window(
                    conn, self.db.mode, int(closed[0][0]), int(closed[-1][0]) + MINUTE_MS)
        if closed and self.settings.write_cache:
            await self.cache.put_1m(series, closed)
        if revised and self.revisions is not None:
            await self.revisions.announce(series, revised)
        BACKFILL_CHUNKS.labels(series.provider).inc()
        BACKFILL_BARS.labels(series.provider).inc(written)
        return written
