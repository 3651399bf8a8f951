-- Who asked for each job: the rate limiter's client identities (key:<id> or ip:<address>) of the
-- POST /backfill requests it answers. Queued jobs are capped per client
-- (BACKFILL_MAX_QUEUED_PER_CLIENT) and GET /backfill lists a client's own jobs. Jobs queued by the
-- service itself (a GET /ohlcv that found missing minutes) and older jobs have none.
ALTER TABLE backfill_jobs ADD COLUMN IF NOT EXISTS clients text[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS backfill_jobs_clients ON backfill_jobs USING gin (clients);
