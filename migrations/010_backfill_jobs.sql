-- Backfill jobs: one row per requested (series, range); state survives restarts.
-- A running job holds a lease (owner, lease_until) renewed by its instance's runner; a job whose
-- lease expired (its instance died) is picked up again by any runner and resumes from the ledger.
CREATE TABLE IF NOT EXISTS backfill_jobs (
    id           text PRIMARY KEY,
    market       text NOT NULL,
    provider     text NOT NULL,
    symbol       text NOT NULL,
    start_ms     bigint NOT NULL,
    end_ms       bigint NOT NULL,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'done', 'failed')),
    chunks_total integer NOT NULL DEFAULT 0,
    chunks_done  integer NOT NULL DEFAULT 0,
    bars_written bigint NOT NULL DEFAULT 0,
    error        text,
    attempts     integer NOT NULL DEFAULT 0,
    owner        text,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CHECK (end_ms > start_ms)
);

-- At most one active (queued or running) job per series and range, across all instances.
CREATE UNIQUE INDEX IF NOT EXISTS backfill_jobs_active
    ON backfill_jobs (market, provider, symbol, start_ms, end_ms)
    WHERE status IN ('queued', 'running');

-- The runner's pick-up query: oldest queued job, or a running one whose lease expired.
CREATE INDEX IF NOT EXISTS backfill_jobs_pick ON backfill_jobs (status, created_at)
    WHERE status IN ('queued', 'running');
