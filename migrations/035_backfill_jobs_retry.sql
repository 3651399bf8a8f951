-- A job whose provider keeps failing yields its runner slot (issue 24.1): it waits queued until
-- retry_at, so other providers' jobs run meanwhile. failing_since is when its current run of
-- failures began (BACKFILL_PATIENCE counts from it; a written chunk clears both). Runners take
-- jobs that are not failing first, so after a restart the failing ones are not all taken first.
ALTER TABLE backfill_jobs ADD COLUMN IF NOT EXISTS retry_at timestamptz;
ALTER TABLE backfill_jobs ADD COLUMN IF NOT EXISTS failing_since timestamptz;
