-- GET /backfill lists jobs newest first (optionally of one status), LIMIT n.
CREATE INDEX IF NOT EXISTS backfill_jobs_created ON backfill_jobs (created_at DESC, id DESC);
