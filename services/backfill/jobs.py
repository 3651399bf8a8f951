"""Backfill job storage: plain async functions, connection first (table ``backfill_jobs``).

A job is one (series, range) to complete. States: ``queued`` -> ``running`` -> ``done`` | ``failed``.
A running job whose provider keeps failing goes back to ``queued`` until ``retry_at``
(:func:`park_job`), so it does not hold a runner slot while its provider is down.
A running job carries a lease (``owner``, ``lease_until``) that its instance's runner renews; when
the instance dies the lease expires and :func:`claim_next` hands the job to another runner, which
resumes it from the gap ledger. The unique partial index ``backfill_jobs_active`` keeps at most one
active job per series and range across instances.

Jobs asked for over REST carry the identities of the clients that asked (``clients``): a client
has at most ``max_queued`` queued jobs, a request overlapping a queued job of its series widens
that job instead of adding one, and a client lists only its own jobs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core.errors import APIError
from core.types import Series

STATES = ("queued", "running", "done", "failed")


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row."""

    id: str
    series: Series
    start_ms: int
    end_ms: int
    status: str
    chunks_total: int
    chunks_done: int
    bars_written: int
    error: str | None
    attempts: int
    owner: str | None
    created_at: datetime
    updated_at: datetime
    #: A parked job is not taken before this time (its provider was failing).
    retry_at: datetime | None = None
    #: When its current run of failures began (``BACKFILL_PATIENCE`` counts from it).
    failing_since: datetime | None = None

    @property
    def progress(self) -> float:
        """Share of chunks done, 0..1 (1 when the job is done)."""
        if self.status == "done":
            return 1.0
        if self.chunks_total <= 0:
            return 0.0
        return min(1.0, self.chunks_done / self.chunks_total)

    def to_api(self) -> dict[str, Any]:
        """The ``GET /backfill/<job_id>`` answer."""
        return {
            "job_id": self.id, "status": self.status, "progress": round(self.progress, 4),
            "bars_written": self.bars_written, "error": self.error,
            "market": self.series.market, "provider": self.series.provider,
            "symbol": self.series.symbol, "start": self.start_ms, "end": self.end_ms,
            "chunks_total": self.chunks_total, "chunks_done": self.chunks_done,
        }


def _job(row: asyncpg.Record) -> Job:
    return Job(
        id=row["id"], series=Series(row["market"], row["provider"], row["symbol"]),
        start_ms=row["start_ms"], end_ms=row["end_ms"], status=row["status"],
        chunks_total=row["chunks_total"], chunks_done=row["chunks_done"],
        bars_written=row["bars_written"], error=row["error"], attempts=row["attempts"],
        owner=row["owner"], created_at=row["created_at"], updated_at=row["updated_at"],
        retry_at=row["retry_at"], failing_since=row["failing_since"],
    )


class TooManyJobs(APIError):
    """The client has its quota of queued jobs: retry once some have run (429 ``too_many_jobs``)."""

    def __init__(self, limit: int, retry_after: float = 60.0) -> None:
        super().__init__(429, "too_many_jobs", f"at most {limit} queued backfill jobs per client; "
                         "retry when some have run", retry_after=retry_after)


#: The active job of a series (``$1``-``$3``) covering [``$4``, ``$5``): the narrowest, then the oldest.
_COVERING = ("FROM backfill_jobs WHERE market = $1 AND provider = $2 AND symbol = $3"
             " AND status IN ('queued', 'running') AND start_ms <= $4 AND end_ms >= $5"
             " ORDER BY (end_ms - start_ms), created_at LIMIT 1")


async def _insert_job(conn: asyncpg.Connection, key: tuple[str, str, str], start_ms: int, end_ms: int,
                      clients: list[str]) -> asyncpg.Record | None:
    """A new queued job, or None when an active one of the same range exists (a race lost)."""
    return await conn.fetchrow(
        "INSERT INTO backfill_jobs (id, market, provider, symbol, start_ms, end_ms, clients)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::text[])"
        " ON CONFLICT (market, provider, symbol, start_ms, end_ms)"
        " WHERE status IN ('queued', 'running') DO NOTHING RETURNING *",
        uuid.uuid4().hex, *key, start_ms, end_ms, clients,
    )


async def submit_job(
    conn: asyncpg.Connection, series: Series, start_ms: int, end_ms: int, client: str,
    max_queued: int, max_range_ms: int,
) -> tuple[Job, bool]:
    """A client's request for [start_ms, end_ms): the active job covering it (the client is added
    to its ``clients``), else a queued job of the series it overlaps, widened to cover
    both when the union spans at most ``max_range_ms``, else a new job unless the client already
    has ``max_queued`` queued jobs (``TooManyJobs``). Returns (job, created)."""
    key = (series.market, series.provider, series.symbol)
    async with conn.transaction():
        # One request of a client at a time, across instances: the quota is exact.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('backfill_jobs'), hashtext($1))", client)
        covering = await conn.fetchrow(
            "UPDATE backfill_jobs SET clients = CASE WHEN $6 = ANY(clients) THEN clients"
            " ELSE array_append(clients, $6) END"
            f" WHERE id = (SELECT id {_COVERING}) RETURNING *",
            *key, start_ms, end_ms, client,
        )
        if covering is not None:
            return _job(covering), False
        widened = await conn.fetchrow(
            "UPDATE backfill_jobs SET start_ms = LEAST(start_ms, $4), end_ms = GREATEST(end_ms, $5),"
            " clients = CASE WHEN $6 = ANY(clients) THEN clients ELSE array_append(clients, $6) END,"
            " updated_at = now()"
            " WHERE id = (SELECT j.id FROM backfill_jobs j WHERE j.market = $1 AND j.provider = $2"
            "   AND j.symbol = $3 AND j.status = 'queued' AND j.start_ms < $5 AND j.end_ms > $4"
            "   AND GREATEST(j.end_ms, $5) - LEAST(j.start_ms, $4) <= $7"
            "   AND NOT EXISTS (SELECT 1 FROM backfill_jobs o WHERE o.market = j.market"
            "     AND o.provider = j.provider AND o.symbol = j.symbol AND o.id <> j.id"
            "     AND o.status IN ('queued', 'running')"
            "     AND o.start_ms = LEAST(j.start_ms, $4) AND o.end_ms = GREATEST(j.end_ms, $5))"
            "   ORDER BY j.created_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " AND status = 'queued' RETURNING *",
            *key, start_ms, end_ms, client, max_range_ms,
        )
        if widened is not None:
            return _job(widened), False
        queued = await conn.fetchval(
            "SELECT count(*) FROM backfill_jobs WHERE status = 'queued' AND clients @> ARRAY[$1]::text[]",
            client)
        if queued >= max_queued:
            raise TooManyJobs(max_queued)
        row = await _insert_job(conn, key, start_ms, end_ms, [client])
    if row is not None:
        return _job(row), True
    # Lost a race with another client's identical request: that job covers this one now.
    return await enqueue_job(conn, series, start_ms, end_ms)


async def enqueue_job(
    conn: asyncpg.Connection, series: Series, start_ms: int, end_ms: int
) -> tuple[Job, bool]:
    """The active job covering [start_ms, end_ms) of ``series``, or a new queued one.
    Returns (job, created). Safe under concurrency, also across instances."""
    key = (series.market, series.provider, series.symbol)
    for _ in range(5):
        existing = await conn.fetchrow(f"SELECT * {_COVERING}", *key, start_ms, end_ms)
        if existing is not None:
            return _job(existing), False
        row = await _insert_job(conn, key, start_ms, end_ms, [])
        if row is not None:
            return _job(row), True
        # Lost a race with another writer: its row is visible now (or it already finished).
    raise RuntimeError("could not enqueue the backfill job after 5 attempts")


async def get_job(conn: asyncpg.Connection, job_id: str) -> Job | None:
    row = await conn.fetchrow("SELECT * FROM backfill_jobs WHERE id = $1", job_id)
    return _job(row) if row is not None else None


async def list_jobs(
    conn: asyncpg.Connection, status: str | None, limit: int, client: str | None = None
) -> list[Job]:
    """Up to ``limit`` jobs, newest first, of one ``status`` (None: any); with ``client``, only
    the jobs that client asked for."""
    rows = await conn.fetch(
        "SELECT * FROM backfill_jobs WHERE ($1::text IS NULL OR status = $1)"
        " AND ($3::text IS NULL OR clients @> ARRAY[$3::text])"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        status, limit, client,
    )
    return [_job(r) for r in rows]


async def claim_next(
    conn: asyncpg.Connection, owner: str, lease_s: float, exclude: list[str] | None = None
) -> Job | None:
    """Take the oldest queued job, or a running one whose lease expired (its owner died); jobs
    that are not failing first, and a parked job not before its ``retry_at``.
    ``exclude``: ids the caller is still running (never claimed twice by one runner). A job
    overlapping a live running job of the same series waits for it, so that the overlap is
    fetched once (it then finds that part in the ledger)."""
    row = await conn.fetchrow(
        "UPDATE backfill_jobs SET status = 'running', owner = $1, attempts = attempts + 1,"
        " lease_until = now() + make_interval(secs => $2), updated_at = now()"
        " WHERE id = (SELECT j.id FROM backfill_jobs j WHERE ((j.status = 'queued'"
        "     AND (j.retry_at IS NULL OR j.retry_at <= now()))"
        "   OR (j.status = 'running' AND (j.lease_until IS NULL OR j.lease_until < now())))"
        "   AND j.id <> ALL($3::text[])"
        "   AND NOT EXISTS (SELECT 1 FROM backfill_jobs r WHERE r.status = 'running'"
        "     AND r.lease_until >= now() AND r.id <> j.id AND r.market = j.market"
        "     AND r.provider = j.provider AND r.symbol = j.symbol"
        "     AND r.start_ms < j.end_ms AND r.end_ms > j.start_ms)"
        "   ORDER BY (j.failing_since IS NOT NULL), j.created_at FOR UPDATE SKIP LOCKED LIMIT 1)"
        " RETURNING *",
        owner, float(lease_s), exclude or [],
    )
    return _job(row) if row is not None else None


async def renew_leases(
    conn: asyncpg.Connection, owner: str, job_ids: list[str], lease_s: float
) -> set[str]:
    """Extend the leases of our running jobs; returns the ids still ours."""
    rows = await conn.fetch(
        "UPDATE backfill_jobs SET lease_until = now() + make_interval(secs => $3)"
        " WHERE owner = $1 AND status = 'running' AND id = ANY($2::text[]) RETURNING id",
        owner, job_ids, float(lease_s),
    )
    return {r["id"] for r in rows}


async def set_plan(conn: asyncpg.Connection, job_id: str, owner: str, remaining: int) -> bool:
    """Record the chunk plan at (re)start: the first plan sets the total, a resumed one derives
    the chunks already done from what is left. False when the job is no longer ours."""
    status = await conn.execute(
        "UPDATE backfill_jobs SET"
        " chunks_total = CASE WHEN chunks_total = 0 THEN $3 ELSE chunks_total END,"
        " chunks_done = GREATEST(0, CASE WHEN chunks_total = 0 THEN $3 ELSE chunks_total END - $3),"
        " updated_at = now() WHERE id = $1 AND owner = $2 AND status = 'running'",
        job_id, owner, remaining,
    )
    return status.endswith(" 1")


async def add_progress(
    conn: asyncpg.Connection, job_id: str, owner: str, chunks: int, bars: int
) -> bool:
    """Count a written chunk (call in the chunk's transaction). False when not ours any more."""
    status = await conn.execute(
        "UPDATE backfill_jobs SET chunks_done = LEAST(chunks_total, chunks_done + $3),"
        " bars_written = bars_written + $4, failing_since = NULL, updated_at = now()"
        " WHERE id = $1 AND owner = $2 AND status = 'running'",
        job_id, owner, chunks, bars,
    )
    return status.endswith(" 1")


async def record_error(conn: asyncpg.Connection, job_id: str, owner: str, error: str) -> bool:
    """Keep the last failure of our running job while it retries (cleared when it is done)."""
    status = await conn.execute(
        "UPDATE backfill_jobs SET error = $3, failing_since = COALESCE(failing_since, now()),"
        " updated_at = now()"
        " WHERE id = $1 AND owner = $2 AND status = 'running'",
        job_id, owner, error,
    )
    return status.endswith(" 1")


async def finish_job(
    conn: asyncpg.Connection, job_id: str, owner: str, error: str | None = None
) -> bool:
    """Mark our job done (``error`` None) or failed with a readable ``error``."""
    status = await conn.execute(
        "UPDATE backfill_jobs SET status = $3, error = $4, owner = NULL, lease_until = NULL,"
        " chunks_done = CASE WHEN $3 = 'done' THEN chunks_total ELSE chunks_done END,"
        " updated_at = now(), finished_at = now()"
        " WHERE id = $1 AND owner = $2 AND status = 'running'",
        job_id, owner, "failed" if error else "done", error,
    )
    return status.endswith(" 1")


async def failing_for(conn: asyncpg.Connection, job_id: str) -> float:
    """Seconds the job's current run of failures has lasted (0 when it is not failing)."""
    value = await conn.fetchval(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - failing_since), 0)::float8"
        " FROM backfill_jobs WHERE id = $1", job_id)
    return float(value or 0.0)


async def park_job(
    conn: asyncpg.Connection, job_id: str, owner: str, error: str, retry_in: float
) -> bool:
    """Hand our running job back to the queue until ``retry_in`` seconds from now, keeping
    ``error`` (its provider keeps failing: its runner slot goes to other jobs meanwhile)."""
    status = await conn.execute(
        "UPDATE backfill_jobs SET status = 'queued', owner = NULL, lease_until = NULL,"
        " retry_at = now() + make_interval(secs => $4), error = $3,"
        " failing_since = COALESCE(failing_since, now()), updated_at = now()"
        " WHERE id = $1 AND owner = $2 AND status = 'running'",
        job_id, owner, error, float(retry_in),
    )
    return status.endswith(" 1")


async def release_jobs(conn: asyncpg.Connection, owner: str) -> int:
    """Hand our running jobs back to the queue (graceful shutdown); returns how many."""
    status = await conn.execute(
        "UPDATE backfill_jobs SET status = 'queued', owner = NULL, lease_until = NULL,"
        " updated_at = now() WHERE owner = $1 AND status = 'running'",
        owner,
    )
    return int(status.split()[-1])


async def job_stats(conn: asyncpg.Connection) -> tuple[dict[str, int], float]:
    """(jobs by state, age in seconds of the oldest active job or 0)."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM backfill_jobs GROUP BY status")
    counts = {state: 0 for state in STATES}
    counts.update({r["status"]: int(r["n"]) for r in rows})
    lag = await conn.fetchval(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8"
        " FROM backfill_jobs WHERE status IN ('queued', 'running')"
    )
    return counts, float(lag or 0.0)
