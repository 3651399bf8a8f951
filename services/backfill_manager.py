"""BackfillManager: completes the stored 1m history of a series over a range, exactly once.

For (market, provider, symbol, [start, end)) the gap ledger says which closed minutes were never
fetched complete; those ranges are split into chunks of the provider's ``max_bars_per_call`` and
fetched through the provider's plugin instance, at most ``BACKFILL_CONCURRENCY`` calls at a time per
provider (``_api_semaphore``). Each chunk is written in one transaction: its bars, its ledger range
(also when the provider answered it empty: a real exchange hole is then *verified empty* and never
fetched again) and the job's progress. The last ``LEDGER_SAFETY_MS`` before now are written but
never recorded complete. A chunk failing with a temporary error (``.temporary``: network, 429/5xx,
a storage outage) is retried with ``plugins.retry.RetryPolicy`` (backoff that honours
``retry_after``) for up to ``BACKFILL_PATIENCE`` seconds; any other error fails the job with a
readable error. Provider calls go through ``ProviderCalls`` (budget guard, metrics, paging).
Jobs (``services.backfill_jobs``) are run by :class:`services.backfill_runner.JobRunner`, which
gets ``run_job`` as a callable.

Public names (stable): ``BackfillManager``, ``BackfillSettings``, ``Progress``, ``readable``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from tenacity import RetryCallState

from core.errors import (
    AppError,
    DataSourceError,
    NetworkPluginError,
    NotFound,
    RateLimitedPluginError,
    UnknownSymbol,
)
from core.metrics import BACKFILL_BARS, BACKFILL_CHUNK_FAILURES, BACKFILL_CHUNKS
from core.ports import Database
from core.timeframes import MINUTE_MS, Bar, bucket_ceil, bucket_start, now_ms
from core.types import Series, to_dt
from plugins.retry import RetryPolicy
from services import aggregates, storage
from services import backfill_jobs as jobs
from services.backfill_gaps import Chunk, bar_islands, gap_report, split_chunks
from services.backfill_runner import JobRunner, RunnerSettings
from services.market_service import MarketService
from services.provider_source import PluginSource
from services.settings import build, setting
from services.sources import LEDGER_SAFETY_MS, CacheSource, RevisionSink

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
class _JobRef:
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

    @property
    def max_range_ms(self) -> int:
        return int(self.max_range_days * 86_400_000)


def readable(exc: BaseException) -> str:
    """The error text a failed job keeps."""
    if isinstance(exc, AppError):
        return f"{exc.code}: {exc.message}"
    return f"internal_error: {type(exc).__name__}: {exc}"


class BackfillManager:
    """Owner of backfills and their job runner. Collaborators come in through the constructor."""

    def __init__(
        self, markets: MarketService, db: Database, cache: CacheSource, config: dict[str, Any],
        revisions: RevisionSink | None = None,
    ) -> None:
        self.markets, self.db, self.cache, self.revisions = markets, db, cache, revisions
        self.plugins = PluginSource(markets)
        self.settings = build(BackfillSettings, config)
        self.concurrency = max(1, self.settings.concurrency)
        self.max_range_ms = self.settings.max_range_ms
        #: Per-provider limit of concurrent upstream calls, shared by every backfill here.
        self._api_semaphore: dict[str, asyncio.Semaphore] = {}
        self.runner = JobRunner(self.run_job, db, build(RunnerSettings, config))

    # --- Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the job runner (when ``BACKFILL_RUNNER`` is on)."""
        await self.runner.start()

    async def close(self, release: bool = True) -> None:
        """Stop the runner; ``release`` hands our running jobs back to the queue."""
        await self.runner.close(release=release)

    # --- Planning and running --------------------------------------------------------------------
    def _semaphore(self, provider: str) -> asyncio.Semaphore:
        sem = self._api_semaphore.get(provider)
        if sem is None:
            sem = self._api_semaphore[provider] = asyncio.Semaphore(self.concurrency)
        return sem

    async def plan(self, series: Series, start: int, end: int) -> list[Chunk]:
        """Chunks covering the closed minutes of [start, end) the ledger lacks."""
        now = now_ms()
        current_min = bucket_start(now, "1m")
        fetch_end = min(bucket_ceil(end, "1m"), current_min)
        safe_end = current_min - LEDGER_SAFETY_MS
        # Minutes older than the provider still serves stay missing (not fetched, not recorded).
        caps = await self.plugins.capabilities(series)
        start = max(start, caps.history_start("1m", now) or start)
        async with self.db.acquire() as conn:
            missing = await storage.missing_ranges(conn, series, bucket_start(start, "1m"), fetch_end)
        step = caps.max_bars_per_call * MINUTE_MS
        return split_chunks(missing, step, safe_end)

    async def backfill(
        self, series: Series, start: int, end: int, on_progress: ProgressCallback | None = None
    ) -> Progress:
        """Complete [start, end) of ``series`` now (no job row); the CLI's entry point."""
        chunks = await self.plan(series, start, end)
        progress = Progress(len(chunks))
        if on_progress is not None:
            on_progress(progress)
        await self._run_chunks(series, chunks, progress, None, on_progress)
        return progress

    async def run_job(self, job: jobs.Job, owner: str) -> None:
        """Run (or resume) a claimed job to done or failed. Storage outages outside a chunk
        propagate: the lease then expires and the job is picked up again."""
        ref = _JobRef(job.id, owner)
        try:
            chunks = await self.plan(job.series, job.start_ms, job.end_ms)
            async with self.db.acquire() as conn:
                if not await jobs.set_plan(conn, job.id, owner, len(chunks)):
                    raise LeaseLost(job.id)
            await self._run_chunks(job.series, chunks, Progress(len(chunks)), ref, None)
            error = None
        except LeaseLost:
            log.info("backfill job %s: lease lost, another runner has it", job.id)
            return
        except DataSourceError:
            raise
        except AppError as exc:
            error = readable(exc)
            log.warning("backfill job %s failed: %s", job.id, error)
        except Exception as exc:  # a bug: keep it on the job, with the trace in the log
            error = readable(exc)
            log.error("backfill job %s crashed", job.id, exc_info=exc)
        async with self.db.acquire() as conn:
            await jobs.finish_job(conn, job.id, owner, error)

    async def _run_chunks(
        self, series: Series, chunks: Sequence[Chunk], progress: Progress,
        job: _JobRef | None, on_progress: ProgressCallback | None,
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

    async def _run_chunk(self, series: Series, chunk: Chunk, job: _JobRef | None) -> tuple[int, int]:
        """Fetch and write one chunk; returns (bars written, calls made)."""

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            BACKFILL_CHUNK_FAILURES.labels(series.provider, "temporary").inc()
            # Being paced (our provider budget or the exchange's 429) is routine for big jobs.
            level = logging.INFO if isinstance(exc, RateLimitedPluginError) else logging.WARNING
            log.log(level, "backfill %s chunk %s: %s; retrying (attempt %d)", series.key(),
                    to_dt(chunk.start).isoformat(), exc, state.attempt_number)
            if job is not None and exc is not None:  # API.md: a retrying job shows its last error
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

    async def _record_error(self, job: _JobRef, error: str) -> None:
        try:
            async with self.db.acquire() as conn:
                await jobs.record_error(conn, job.id, job.owner, error)
        except (DataSourceError, asyncpg.PostgresError) as err:  # storage down: the log has it
            log.info("backfill job %s: could not record its error: %s", job.id, err)

    async def _write(
        self, series: Series, chunk: Chunk, bars: list[Bar], job: _JobRef | None
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

    # --- Jobs and reports ------------------------------------------------------------------------
    async def submit(self, series: Series, start: int, end: int) -> tuple[jobs.Job, bool]:
        """Queue a job for [start, end) (minute aligned), or answer the active one covering it.
        Raises UnknownMarket / UnknownProvider / UnknownSymbol."""
        await self.check_series(series)
        async with self.db.acquire() as conn:
            job, created = await jobs.enqueue_job(
                conn, series, bucket_start(start, "1m"), bucket_ceil(end, "1m"))
        if created:
            self.runner.wake()
        return job, created

    async def check_series(self, series: Series) -> None:
        """Raise UnknownMarket / UnknownProvider / UnknownSymbol; the symbol is checked against
        the provider's list when the provider answers (else the job reports a bad symbol)."""
        self.markets.check_provider(series.market, series.provider)
        try:
            known = await self.markets.symbols(series.market, series.provider)
        except NetworkPluginError as exc:  # cannot check now; the job will report a bad symbol
            log.info("symbol check skipped for %s: %s", series.key(), exc)
            return
        if series.symbol not in known:
            raise UnknownSymbol(f"{series.provider} has no symbol {series.symbol!r}",
                                details={"symbol": [f"unknown on {series.provider}"]})

    async def get_job(self, job_id: str) -> jobs.Job:
        """The job with ``job_id``; raises ``NotFound``."""
        async with self.db.acquire() as conn:
            job = await jobs.get_job(conn, job_id)
        if job is None:
            raise NotFound(f"no backfill job {job_id!r}")
        return job

    async def list_jobs(self, status: str | None, limit: int) -> list[jobs.Job]:
        """Up to ``limit`` jobs, newest first, of one ``status`` (None: any)."""
        async with self.db.acquire() as conn:
            return await jobs.list_jobs(conn, status, limit)

    async def schedule_missing(self, series: Series, ranges: list[tuple[int, int]]) -> str | None:
        """The orchestrator's ``on_missing`` hook: one job over the span of ``ranges`` (its last
        ``max_range_ms``, from the epoch at most: 5000 weeks reach 1930); its id, or None when
        no job could be queued (storage down: the answer stays marked incomplete)."""
        end = ranges[-1][1] if ranges else 0
        if (start := max(ranges[0][0], end - self.max_range_ms, 0) if ranges else 0) >= end:
            return None
        try:
            async with self.db.acquire() as conn:
                job, created = await jobs.enqueue_job(conn, series, start, end)
        except DataSourceError as exc:
            log.warning("could not schedule a backfill for %s: %s", series.key(), exc.details)
            return None
        if created:
            self.runner.wake()
        return job.id

    async def gaps(self, series: Series, start: int, end: int) -> dict[str, list[list[int]]]:
        """``{"missing", "verified_empty"}`` ranges of the 1m series within [start, end)."""
        start, end = bucket_start(start, "1m"), bucket_ceil(end, "1m")
        async with self.db.acquire() as conn:
            covered = await storage.covered_ranges(conn, series, start, end)
            islands = await bar_islands(conn, series, start, end)
        return gap_report(start, end, covered, islands)
