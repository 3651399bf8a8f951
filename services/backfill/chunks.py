"""Running backfill chunks: fetchers and one writer with a bounded queue between them.

``BACKFILL_CONCURRENCY`` fetchers take chunks in order and fetch them through the provider-call
path (budget, breaker, metrics) while the writer writes what they fetched: everything waiting in
the queue as one batch, in time order, in one transaction (its bars, its chunks' ledger ranges, the
job's progress). A batch whose minutes hold no stored bar goes straight into ``ohlcv_1m`` with one
binary COPY; otherwise (or when a concurrent writer got there first) it is upserted. Then the
aggregates are refreshed once over the batch. Two batches are written at once, each in its own
transaction: one COPYs while the other makes its round trips, and their COPYs take turns in
batch order (``CopyTurn``). Their commits may land in either order: each one's ledger merge and
progress are complete on their own. Fetches and writes retry temporary errors with
``plugins.retry.RetryPolicy`` for ``BACKFILL_PATIENCE`` seconds; a job's fetches only for
``BACKFILL_YIELD_AFTER`` seconds (not at all while the provider's breaker is open): then the job
is ``Parked`` and gives its runner slot to other jobs (the manager queues it again). The module
also holds what the runner passes around: settings, progress, fetched chunks, the writers' turns.

Public names (stable): ``ChunkRunner``, ``BackfillSettings``, ``Progress``, ``ProgressCallback``,
``JobRef``, ``JobLeaseLost``, ``readable``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from tenacity import RetryCallState

from core.errors import AppError, DataSourceError, NetworkPluginError, RateLimitedPluginError
from core.metrics import BACKFILL_BARS, BACKFILL_CHUNK_FAILURES, BACKFILL_CHUNKS
from core.ports import Database
from core.timeframes import DAY_MS, MINUTE_MS, Bar, now_ms
from core.types import Series, to_dt
from plugins.retry import RetryPolicy
from services.backfill import jobs
from services.backfill.gaps import Chunk
from services.bars import aggregates, storage
from services.bars.cache import BestEffortCache
from services.bars.provider_source import ProviderClient
from services.bars.sources import RevisionSink
from services.settings import setting
from services.upstream.breaker import ProviderCircuitOpen

__all__ = [
    "BackfillSettings",
    "ChunkRunner",
    "JobLeaseLost",
    "JobRef",
    "Progress",
    "ProgressCallback",
    "readable",
]
log = logging.getLogger(__name__)
#: Calls one chunk may make while paging (a chunk normally needs one).
_CHUNK_CALL_BUDGET = 1_000
#: Fetched chunks that may wait for the writer, per fetcher; the writer takes up to all of them
#: as one batch (one transaction, one COPY).
_QUEUE_PER_FETCHER = 4
#: Batches being written at once (each in its own transaction; their COPYs take turns).
_WRITES_IN_FLIGHT = 2


class JobLeaseLost(Exception):
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

    concurrency: int = setting("BACKFILL_CONCURRENCY")
    patience: float = setting("BACKFILL_PATIENCE")
    yield_after: float = setting("BACKFILL_YIELD_AFTER")
    retry_base: float = setting("BACKFILL_RETRY_BASE")
    retry_max_wait: float = setting("BACKFILL_RETRY_MAX_WAIT")
    write_cache: bool = setting("BACKFILL_WRITE_CACHE")
    cache_days: float = setting("BACKFILL_CACHE_DAYS")
    max_range_days: float = setting("BACKFILL_MAX_RANGE_DAYS", float)
    auto_max_days: float = setting("BACKFILL_AUTO_MAX_DAYS", float)
    max_queued_per_client: int = setting("BACKFILL_MAX_QUEUED_PER_CLIENT")

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


class ChunkRunner:
    """Runs chunks of one backfill, ``BACKFILL_CONCURRENCY`` calls at a time per provider."""

    def __init__(self, plugins: ProviderClient, db: Database, cache: BestEffortCache,
                 settings: BackfillSettings, revisions: RevisionSink | None = None) -> None:
        self.plugins, self.db, self.cache, self.settings = plugins, db, cache, settings
        self.revisions = revisions
        self.concurrency = max(1, settings.concurrency)
        #: Per-provider limit of concurrent upstream calls, shared by every backfill here.
        self._api_semaphore: dict[str, asyncio.Semaphore] = {}
        #: Told why a chunk waits before each retry (the CLI shows it): see ``for_run``.
        self.on_wait: Callable[[str], None] | None = None

    def for_run(self, patience: float | None = None,
                on_wait: Callable[[str], None] | None = None) -> ChunkRunner:
        """This runner for one run with its own ``BACKFILL_PATIENCE`` and a hook told why a chunk
        waits before each retry (its retries are then logged at INFO: the hook shows them); the
        per-provider call limits stay shared."""
        run = copy.copy(self)
        if patience is not None:
            run.settings = dataclasses.replace(self.settings, patience=max(0.0, patience))
        run.on_wait = on_wait
        return run

    def _semaphore(self, provider: str) -> asyncio.Semaphore:
        sem = self._api_semaphore.get(provider)
        if sem is None:
            sem = self._api_semaphore[provider] = asyncio.Semaphore(self.concurrency)
        return sem

    async def run(
        self, series: Series, chunks: Sequence[Chunk], progress: Progress,
        job: JobRef | None, on_progress: ProgressCallback | None,
    ) -> None:
        """Fetch and write ``chunks``; the first error (after retries) cancels the rest. A fetch
        that is ``Parked`` stops the run more gently: no new chunk is started, the fetches under
        way end (one may be the breaker's probe, which a cancel would waste) and what they
        fetched is written; then ``Parked`` is raised."""
        todo = deque(chunks)
        parked: list[Parked] = []
        # Fetched chunks wait here for the writer; a full queue holds the fetchers back.
        queue: asyncio.Queue[Fetched | None] = asyncio.Queue(
            maxsize=_QUEUE_PER_FETCHER * self.concurrency)
        fetchers = min(self.concurrency, len(chunks))

        async def fetcher() -> None:
            nonlocal fetchers
            while todo and not parked:
                try:
                    fetched = await self._fetch(series, todo.popleft(), job)
                except Parked as exc:
                    parked.append(exc)
                    break
                await queue.put(fetched)
            fetchers -= 1
            if fetchers == 0:
                await queue.put(None)

        async def writer() -> None:
            # Two batches in flight: one COPYs while the other makes its round trips (the check
            # before, the ledger and the commit after), so PostgreSQL is kept COPYing; their
            # COPYs take turns in batch order (CopyTurn).
            end, slots, turn = False, asyncio.Semaphore(_WRITES_IN_FLIGHT), CopyTurn()
            async with asyncio.TaskGroup() as writes:
                while not end:
                    await slots.acquire()
                    item = await queue.get()
                    if item is None:
                        return
                    batch = [item]
                    while not queue.empty():
                        if (item := queue.get_nowait()) is None:
                            end = True
                            break
                        batch.append(item)
                    # In time order: PostgreSQL appends ascending keys to the primary key's
                    # rightmost leaf page without a descent from the root; fetchers finish out of
                    # order, and chunks written as they came cost it a third more CPU a COPY.
                    batch.sort(key=lambda f: f.chunk.start)
                    turn = CopyTurn(turn)
                    writes.create_task(write(batch, turn, slots))

        async def write(batch: list[Fetched], turn: CopyTurn, slots: asyncio.Semaphore) -> None:
            try:  # every commit attempt passes the turn on, whatever happens (_write)
                written = await self._write(series, batch, job, turn)
            finally:
                slots.release()
            progress.bars_written += written
            progress.chunks_done += len(batch)
            progress.calls += sum(f.calls for f in batch)
            if on_progress is not None:
                on_progress(progress)

        if not chunks:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(fetchers):
                    tg.create_task(fetcher(), name=f"backfill-fetcher-{i}")
                tg.create_task(writer(), name="backfill-writer")
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
        if parked:
            raise parked[0]

    async def _retrying(self, series: Series, what: str, chunk: Chunk, job: JobRef | None,
                        fn: Callable[[], Awaitable[Any]], park: bool = False) -> Any:
        """``await fn()`` retrying temporary errors for ``BACKFILL_PATIENCE`` seconds; a retrying
        job shows its last error (docs/api.md). ``park``: a provider error still failing after
        ``BACKFILL_YIELD_AFTER`` seconds raises ``Parked`` instead (the job yields its slot)."""
        where = f"chunk starting {to_dt(chunk.start).isoformat()}"

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            BACKFILL_CHUNK_FAILURES.labels(series.provider, "temporary").inc()
            # Being paced (our provider budget or the exchange's 429) is routine for big jobs.
            level = logging.INFO if isinstance(exc, RateLimitedPluginError) else logging.WARNING
            if self.on_wait is not None and exc is not None:
                sleep = getattr(state.next_action, "sleep", None) or 0.0
                left = max(0.0, patience - (state.seconds_since_start or 0.0))
                self.on_wait(f"{readable(exc)} ({where}); retrying in {sleep:.0f} s, for"
                             f" {left:.0f} s more (patience {patience:g} s)")
                level = logging.INFO  # the hook shows it
            log.log(level, "backfill %s %s %s: %s; retrying (attempt %d)", series.key(), what,
                    where, exc, state.attempt_number)
            if job is not None and exc is not None:
                await self._record_error(job, f"{readable(exc)} ({where}; retrying)")

        patience = self.settings.patience
        if park:
            patience = min(patience, self.settings.yield_after)
        policy = RetryPolicy(series.provider, max_wait=self.settings.retry_max_wait,
                             base_wait=self.settings.retry_base, patience=patience)
        try:
            return await policy.call(fn, before_sleep)
        except NetworkPluginError as exc:
            if park:
                raise self._parked(exc, where) from exc
            BACKFILL_CHUNK_FAILURES.labels(series.provider, "permanent").inc()
            exc.message = f"{exc.message} ({where})"
            raise
        except (AppError, asyncpg.PostgresError) as exc:
            BACKFILL_CHUNK_FAILURES.labels(series.provider, "permanent").inc()
            if isinstance(exc, AppError):
                exc.message = f"{exc.message} ({where})"
            raise

    def _parked(self, exc: NetworkPluginError, where: str) -> Parked:
        """The job waits queued for the next retry (at least the provider's ``retry_after``)."""
        retry_after = getattr(exc, "retry_after", None)
        wait = self.settings.retry_max_wait
        if isinstance(retry_after, int | float) and retry_after > wait:
            wait = float(retry_after)
        exc.message = f"{exc.message} ({where})"
        return Parked(exc, wait)

    async def _fetch(self, series: Series, chunk: Chunk, job: JobRef | None) -> Fetched:
        """The closed bars of one chunk (the pages keep to [start, end), ascending). A job's
        fetch raises ``Parked`` while its provider keeps failing (see the module)."""
        made = 0
        where = f"chunk starting {to_dt(chunk.start).isoformat()}"

        async def once() -> list[Bar]:
            try:
                async with self._semaphore(series.provider):
                    bars, calls, _ = await self.plugins.fetch(
                        series, "1m", chunk.start, chunk.end, _CHUNK_CALL_BUDGET)
            except ProviderCircuitOpen as exc:
                if job is None:
                    raise
                raise self._parked(exc, where) from exc  # the breaker says: down for a while
            nonlocal made
            made += calls
            return bars

        bars: list[Bar] = await self._retrying(series, "fetch", chunk, job, once,
                                               park=job is not None)
        now = now_ms()
        if bars and bars[-1][0] + MINUTE_MS > now:  # the forming minute is never stored
            bars = [b for b in bars if b[0] + MINUTE_MS <= now]
        since = now - int(self.settings.cache_days * DAY_MS) if self.settings.write_cache else now
        recent = [b for b in bars if b[0] >= since] if bars and bars[-1][0] >= since else []
        first, last = (int(bars[0][0]), int(bars[-1][0])) if bars else (chunk.start, chunk.start)
        return Fetched(chunk, storage.encode_rows(series, bars), len(bars), first, last, recent,
                       made)

    async def _record_error(self, job: JobRef, error: str) -> None:
        try:
            async with self.db.acquire() as conn:
                await jobs.record_error(conn, job.id, job.owner, error)
        except (DataSourceError, asyncpg.PostgresError) as err:  # storage down: the log has it
            log.info("backfill job %s: could not record its error: %s", job.id, err)

    async def _write(self, series: Series, batch: list[Fetched], job: JobRef | None,
                     turn: CopyTurn) -> int:
        """Write a batch of fetched chunks; returns the bars written."""
        rows = [f.rows for f in batch if f.count]
        complete = [(f.chunk.start, f.chunk.complete_end) for f in batch
                    if f.chunk.complete_end > f.chunk.start]
        ranges = [(f.chunk.start, f.chunk.end) for f in batch]
        written = sum(f.count for f in batch)
        progress = (len(batch), written)  # the job's chunks and bars done by this batch
        revised: list[Bar] = []  # stored bars this batch changed: announced as revisions

        async def commit() -> None:
            revised.clear()
            try:
                async with self.db.acquire() as conn:
                    if rows and not await storage.any_stored(conn, series, ranges):
                        try:
                            return await self._commit(conn, series, rows, complete, progress, job,
                                                      None, turn)
                        except asyncpg.UniqueViolationError:  # a concurrent writer got there first
                            log.debug("backfill %s: minutes stored meanwhile, upserting",
                                      series.key())
                    await self._commit(conn, series, rows, complete, progress, job, revised, turn)
            finally:
                # Whatever this attempt did, the next batch need not wait for a retry of it (it
                # holds a connection while it waits: with a small pool this one's retry needs it).
                turn.pass_on()

        async def refresh() -> None:  # once over the batch's span (its chunks may be apart)
            lo = min(f.first for f in batch if f.count)
            hi = max(f.last for f in batch if f.count) + MINUTE_MS
            async with self.db.acquire() as conn:
                await aggregates.refresh_window(conn, self.db.mode, lo, hi)

        first = batch[0].chunk
        await self._retrying(series, "write", first, job, commit)
        if rows and aggregates.has_aggregates(self.db.mode):  # none to refresh: no connection
            await self._retrying(series, "aggregate refresh", first, job, refresh)
        for f in batch:  # each chunk on its own: a cache write replaces its span
            if f.recent:
                await self.cache.put_1m(series, f.recent)
        if revised and self.revisions is not None:
            await self.revisions.announce(series, revised)
        BACKFILL_CHUNKS.labels(series.provider).inc(len(batch))
        BACKFILL_BARS.labels(series.provider).inc(written)
        return written

    async def _commit(
        self, conn: asyncpg.Connection, series: Series, rows: list[bytes],
        complete: list[tuple[int, int]], progress: tuple[int, int], job: JobRef | None,
        revised: list[Bar] | None, turn: CopyTurn,
    ) -> None:
        """Rows (straight COPY when ``revised`` is None, else upserted), the ledger ranges and
        the job's ``progress`` (chunks, bars) in one transaction."""
        async with conn.transaction():
            # Asynchronous commit: a crash may lose the last few batches' commits whole (bars,
            # ledger and progress alike), and the resumed job fetches them again. A job's final
            # (synchronous) commit makes every earlier one durable.
            await conn.execute("SET LOCAL synchronous_commit TO off")
            if rows and revised is None:
                async with turn:  # after the batch before this one has COPYed
                    await storage.copy_rows(conn, rows)
            elif rows:
                await storage.upsert_rows(conn, rows, revised)
            if complete:
                await storage.record_complete(conn, series, complete)
            if job is not None and not await jobs.add_progress(conn, job.id, job.owner, *progress):
                raise JobLeaseLost(job.id)
