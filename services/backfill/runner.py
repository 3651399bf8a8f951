"""JobRunner: the background loop that runs backfill jobs stored in PostgreSQL.

Public names (stable): ``JobRunner``, ``RunnerSettings``, ``RunJob``.

Every ``min(BACKFILL_POLL_INTERVAL, BACKFILL_LEASE_SECONDS / 3)`` seconds (or at once when woken by
a new job) the loop renews the leases of the jobs this instance runs, claims queued jobs (and
running ones whose lease expired: their instance died) with ``FOR UPDATE SKIP LOCKED`` up to
``BACKFILL_MAX_JOBS`` (jobs whose provider was failing last, and a parked one not before its
``retry_at``: ``jobs.claim_next``), and refreshes the job gauges. Each job runs as a task owned by the runner.
On shutdown the tasks are cancelled and their jobs handed back to the queue, so a restart (or
another instance) resumes them; after a crash the same happens once the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.errors import DataSourceError
from core.metrics import BACKFILL_JOBS, BACKFILL_LAG, BACKFILL_RUNNER_ERRORS
from core.ports import Database
from services.backfill import jobs
from services.settings import setting

log = logging.getLogger(__name__)
#: Runs (or resumes) one claimed job to its end: ``BackfillManager.run_job``.
RunJob = Callable[[jobs.Job, str], Awaitable[None]]


@dataclass(frozen=True)
class RunnerSettings:
    """The job runner's settings (``build(RunnerSettings, config)``)."""

    enabled: bool = setting("BACKFILL_RUNNER")
    max_jobs: int = setting("BACKFILL_MAX_JOBS")
    lease: float = setting("BACKFILL_LEASE_SECONDS")
    poll_interval: float = setting("BACKFILL_POLL_INTERVAL")


class JobRunner:
    """Claims and runs backfill jobs with ``run_job`` (no import of the manager: no cycle)."""

    def __init__(self, run_job: RunJob, db: Database, settings: RunnerSettings) -> None:
        self.run_job, self.db = run_job, db
        self.enabled = settings.enabled
        self.max_jobs = max(1, settings.max_jobs)
        self.lease = max(0.5, settings.lease)
        self.interval = min(settings.poll_interval, self.lease / 3)
        #: Identifies this runner in ``backfill_jobs.owner``.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for work now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start the loop (idempotent; nothing when ``BACKFILL_RUNNER`` is off)."""
        if self.enabled and self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="backfill-runner")

    async def _run(self) -> None:
        delay = self.interval
        while True:
            try:
                await self._tick()
                delay = self.interval
            except asyncio.CancelledError:
                raise
            except DataSourceError as exc:
                BACKFILL_RUNNER_ERRORS.inc()
                log.warning("backfill runner: storage unavailable: %s", exc.details)
                delay = min(max(delay * 2, self.interval), 30.0)
            except Exception as exc:  # long-running loop: log, count, back off, go on
                BACKFILL_RUNNER_ERRORS.inc()
                log.error("backfill runner tick failed", exc_info=exc)
                delay = min(max(delay * 2, self.interval), 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()

    async def _tick(self) -> None:
        async with self.db.acquire() as conn:
            ids = [job_id for job_id, task in self._running.items() if not task.done()]
            if ids:
                ours = await jobs.renew_leases(conn, self.owner, ids, self.lease)
                for job_id in set(ids) - ours:
                    task = self._running.get(job_id)
                    if task is None or task.done():  # it ended (and let go) meanwhile
                        continue
                    log.warning("backfill job %s: lease lost, stopping it here", job_id)
                    task.cancel()
            while len(self._running) < self.max_jobs:
                job = await jobs.claim_next(conn, self.owner, self.lease, list(self._running))
                if job is None:
                    break
                log.info("backfill job %s: running %s [%d, %d) (attempt %d)", job.id,
                         job.series.key(), job.start_ms, job.end_ms, job.attempts)
                self._start(job)
            counts, lag = await jobs.job_stats(conn)
        for state, n in counts.items():
            BACKFILL_JOBS.labels(state).set(n)
        BACKFILL_LAG.set(lag)

    def _start(self, job: jobs.Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"backfill-job-{job.id}")
        self._running[job.id] = task

        def done(_: asyncio.Task[None], job_id: str = job.id) -> None:
            if self._running.get(job_id) is task:
                del self._running[job_id]
            self._wake.set()

        task.add_done_callback(done)

    async def _run_job(self, job: jobs.Job) -> None:
        try:
            await self.run_job(job, self.owner)
        except asyncio.CancelledError:
            raise
        except DataSourceError as exc:
            log.warning("backfill job %s paused, storage unavailable (resumes after its lease):"
                        " %s", job.id, exc.details)
        except Exception as exc:  # the job stays running; its lease expires and it is retried
            BACKFILL_RUNNER_ERRORS.inc()
            log.error("backfill job %s stopped unexpectedly", job.id, exc_info=exc)

    async def close(self, release: bool = True) -> None:
        """Cancel the loop and the jobs; ``release`` re-queues our running jobs (graceful stop)."""
        tasks = [t for t in [self._loop, *self._running.values()] if t is not None]
        self._loop = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # our own cancellation still propagates
        self._running.clear()
        if not release or not tasks:
            return
        try:
            async with self.db.acquire() as conn:
                n = await jobs.release_jobs(conn, self.owner)
            if n:
                log.info("backfill: %d running job(s) handed back to the queue", n)
        except DataSourceError as exc:
            log.warning("backfill: could not release jobs (their leases will expire): %s",
                        exc.details)
