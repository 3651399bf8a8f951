"""BackfillManager: completes the stored 1m history of a series over a range, exactly once.

For (market, provider, symbol, [start, end)) the gap ledger says which closed minutes were never
fetched complete; those ranges (never before the listing the provider states, nor older than it
still serves) are split into chunks of the provider's ``max_bars_per_call``, run by
``services.backfill.chunks.ChunkRunner``: at most ``BACKFILL_CONCURRENCY`` calls at a time per
provider, each chunk written in one transaction (its bars, its ledger range, also when the
provider answered it empty: a real exchange hole is then *verified empty* and never fetched again,
and the job's progress). The last ``LEDGER_SAFETY_MS`` before now are written but never recorded
complete. A chunk failing with a temporary error (network, 429/5xx, a storage outage) is retried
with ``plugins.retry.RetryPolicy`` for up to ``BACKFILL_PATIENCE`` seconds; any other error fails
the job with a readable error. A job whose provider keeps failing for ``BACKFILL_YIELD_AFTER``
seconds (or whose breaker is open) does not hold its runner slot meanwhile: it goes back to the
queue until its next try (``retry_at``), keeping the failure as its ``error``, and fails once it
has been failing for ``BACKFILL_PATIENCE``. Provider calls go through ``ProviderCalls``. Jobs
(``services.backfill.jobs``) are run by :class:`services.backfill.runner.JobRunner`, which gets
``run_job`` as a callable.

Public names (stable): ``BackfillManager``, ``BackfillSettings``, ``Progress``, ``readable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core.errors import (
    AppError,
    DataSourceError,
    NetworkPluginError,
    NotFound,
    PluginFeatureNotSupportedError,
    UnknownSymbol,
)
from core.ports import Database
from core.timeframes import MINUTE_MS, bucket_ceil, bucket_start, now_ms
from core.types import Series, to_dt
from services.backfill import jobs
from services.backfill.chunks import (
    BackfillSettings,
    ChunkRunner,
    JobLeaseLost,
    JobRef,
    Parked,
    Progress,
    ProgressCallback,
    readable,
)
from services.backfill.gaps import Chunk, bar_islands, gap_report, split_chunks
from services.backfill.runner import JobRunner, RunnerSettings
from services.bars import storage
from services.bars.cache import BestEffortCache
from services.bars.provider_source import ProviderClient
from services.bars.sources import LEDGER_SAFETY_MS, RevisionSink
from services.settings import build
from services.upstream.market_service import MarketService

__all__ = ["BackfillManager", "BackfillSettings", "Progress", "readable"]
log = logging.getLogger(__name__)


class BackfillManager:
    """Owner of backfills and their job runner. Collaborators come in through the constructor."""

    def __init__(
        self, markets: MarketService, db: Database, cache: BestEffortCache, config: dict[str, Any],
        revisions: RevisionSink | None = None,
    ) -> None:
        self.markets, self.db, self.cache, self.revisions = markets, db, cache, revisions
        self.plugins = ProviderClient(markets)
        self.settings = build(BackfillSettings, config)
        self.max_range_ms = self.settings.max_range_ms
        self.chunks = ChunkRunner(self.plugins, db, cache, self.settings, revisions)
        self.runner = JobRunner(self.run_job, db, build(RunnerSettings, config))

    # --- Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the job runner (when ``BACKFILL_RUNNER`` is on)."""
        await self.runner.start()

    async def close(self, release: bool = True) -> None:
        """Stop the runner; ``release`` hands our running jobs back to the queue."""
        await self.runner.close(release=release)

    # --- Planning and running --------------------------------------------------------------------
    async def plan(self, series: Series, start: int, end: int) -> list[Chunk]:
        """Chunks covering the closed minutes of [start, end) the ledger lacks."""
        now = now_ms()
        current_min = bucket_start(now, "1m")
        fetch_end = min(bucket_ceil(end, "1m"), current_min)
        safe_end = current_min - LEDGER_SAFETY_MS
        # Minutes before the listing the provider states are known empty (recorded so, as the
        # request path does); minutes older than the provider still serves are not fetched (they
        # stay missing, and the job says so: ``unserved``).
        plugin = await self.markets.get_plugin(series.market, series.provider)
        caps, listed = plugin.capabilities, plugin.listing_ms(series.symbol)
        start = bucket_start(start, "1m")
        async with self.db.acquire() as conn:
            if listed is not None and min(listed, safe_end) > start:
                await storage.record_complete(conn, series, [(start, min(listed, safe_end))])
            start = max(start, caps.history_start("1m", now) or start, listed or start)
            missing = await storage.missing_ranges(conn, series, bucket_start(start, "1m"), fetch_end)
        step = caps.max_bars_per_call * MINUTE_MS
        return split_chunks(missing, step, safe_end)

    async def backfill(
        self, series: Series, start: int, end: int, on_progress: ProgressCallback | None = None,
        patience: float | None = None, on_wait: Callable[[str], None] | None = None,
    ) -> Progress:
        """Complete [start, end) of ``series`` now (no job row); the CLI's entry point.
        ``patience`` replaces ``BACKFILL_PATIENCE`` for this run; ``on_wait`` is told why a chunk
        waits before each retry."""
        chunks = await self.plan(series, start, end)
        if not chunks:  # no call will tell: ask the provider's list
            await self.check_series(series)
        progress = Progress(len(chunks))
        if on_progress is not None:
            on_progress(progress)
        runner = self.chunks.for_run(patience, on_wait)
        await runner.run(series, chunks, progress, None, on_progress)
        unserved = await self.unserved(series, start, end)
        if unserved is not None:
            unserved.message += f" ({progress.bars_written:,} bars written)"
            raise unserved
        return progress

    async def run_job(self, job: jobs.Job, owner: str) -> None:
        """Run (or resume) a claimed job to done or failed. Storage outages outside a chunk
        propagate: the lease then expires and the job is picked up again."""
        ref = JobRef(job.id, owner)
        try:
            chunks = await self.plan(job.series, job.start_ms, job.end_ms)
            if not chunks:  # no call will tell whether the symbol (still) exists: ask its list
                await self.check_series(job.series)
            async with self.db.acquire() as conn:
                if not await jobs.set_plan(conn, job.id, owner, len(chunks)):
                    raise JobLeaseLost(job.id)
            await self.chunks.run(job.series, chunks, Progress(len(chunks)), ref, None)
            unserved = await self.unserved(job.series, job.start_ms, job.end_ms)
            if unserved is not None:  # not "done" while /gaps shows the range missing
                raise unserved
            error = None
        except JobLeaseLost:
            log.info("backfill job %s: lease lost, another runner has it", job.id)
            return
        except Parked as parked:
            if await self._park(job, owner, parked):
                return
            error = (f"{readable(parked.cause)}; gave up after BACKFILL_PATIENCE"
                     f" ({self.settings.patience:g} s) of failures")
            log.warning("backfill job %s failed: %s", job.id, error)
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

    async def unserved(self, series: Series, start: int, end: int) -> AppError | None:
        """After a run: why closed minutes of [start, end) are still missing (the provider no
        longer serves them), as the error that fails the job; None when nothing is (the last
        ``LEDGER_SAFETY_MS`` before now are never recorded complete, so they do not count)."""
        now = now_ms()
        safe_end = bucket_start(now, "1m") - LEDGER_SAFETY_MS
        start, end = bucket_start(start, "1m"), min(bucket_ceil(end, "1m"), safe_end)
        async with self.db.acquire() as conn:
            missing = await storage.missing_ranges(conn, series, start, end)
        if not missing:
            return None
        minutes = sum(b - a for a, b in missing) // MINUTE_MS
        first = to_dt(missing[0][0]).isoformat()
        plugin = await self.markets.get_plugin(series.market, series.provider)
        caps = plugin.capabilities
        oldest = caps.history_start("1m", now)
        if oldest is not None and missing[0][0] < oldest:
            depth = caps.extra.get("history_bars")
            reason = (f"{series.provider} serves only its latest {depth} 1m bars (from"
                      f" {to_dt(oldest).isoformat()}): {minutes:,} minutes from {first} stay"
                      " missing")
        else:
            reason = f"{minutes:,} minutes from {first} stay missing"
        return PluginFeatureNotSupportedError(reason, details={
            "missing_minutes": minutes, "missing": [list(r) for r in missing[:10]]})

    async def _park(self, job: jobs.Job, owner: str, parked: Parked) -> bool:
        """Queue the job again until its next try (its slot goes to other jobs); False when it
        has been failing for ``BACKFILL_PATIENCE`` already (it is failed instead)."""
        async with self.db.acquire() as conn:
            if await jobs.failing_for(conn, job.id) >= self.settings.patience:
                return False
            when = to_dt(now_ms() + int(parked.retry_in * 1000)).isoformat(timespec="seconds")
            error = f"{readable(parked.cause)}; the job waits for the provider, next try at {when}"
            await jobs.park_job(conn, job.id, owner, error, parked.retry_in)
        log.info("backfill job %s: %s; parked for %.1f s", job.id, readable(parked.cause),
                 parked.retry_in)
        return True

    # --- Jobs and reports ------------------------------------------------------------------------
    async def submit(self, series: Series, start: int, end: int, client: str | None = None
                     ) -> tuple[jobs.Job, bool]:
        """Queue a job for [start, end) (minute aligned), or answer the active one covering it.
        For a ``client`` (an API key's or an IP's identity) a queued job it overlaps is widened
        instead, and past ``BACKFILL_MAX_QUEUED_PER_CLIENT`` queued jobs it raises ``TooManyJobs``.
        Raises UnknownMarket / UnknownProvider / UnknownSymbol."""
        await self.check_series(series)
        start, end = bucket_start(start, "1m"), bucket_ceil(end, "1m")
        async with self.db.acquire() as conn:
            if client is None:
                job, created = await jobs.enqueue_job(conn, series, start, end)
            else:
                job, created = await jobs.submit_job(
                    conn, series, start, end, client, self.settings.max_queued_per_client,
                    self.max_range_ms)
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

    async def list_jobs(self, status: str | None, limit: int, client: str | None = None) -> list[jobs.Job]:
        """Up to ``limit`` jobs, newest first, of one ``status`` (None: any); with ``client``,
        only those that client asked for (None: every job, for operators)."""
        async with self.db.acquire() as conn:
            return await jobs.list_jobs(conn, status, limit, client)

    async def schedule_missing(self, series: Series, ranges: list[tuple[int, int]]) -> str | None:
        """The orchestrator's ``on_missing`` hook: one job over the span of ``ranges``, bounded to
        its latest ``BACKFILL_AUTO_MAX_DAYS`` (a query never starts a huge backfill by itself)
        and to what the provider still serves (a job over the rest could only fail); its id, or
        None when no job could be queued (storage down: the answer stays marked incomplete)."""
        end = ranges[-1][1] if ranges else 0
        bound = int(min(self.settings.auto_max_days, self.settings.max_range_days) * 86_400_000)
        plugin = await self.markets.get_plugin(series.market, series.provider)
        oldest = plugin.capabilities.history_start("1m", now_ms()) or 0
        if (start := max(ranges[0][0], end - bound, oldest, 0) if ranges else 0) >= end:
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
