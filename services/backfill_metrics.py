"""Prometheus metrics of backfills (default registry). Labels: configured provider ids and fixed
enums only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BACKFILL_BARS = Counter(
    "backfill_bars_written_total", "1m bars written to storage by backfills", ["provider"]
)
BACKFILL_CHUNKS = Counter(
    "backfill_chunks_fetched_total", "Backfill chunks fetched and written", ["provider"]
)
BACKFILL_CHUNK_FAILURES = Counter(
    "backfill_chunks_failed_total",
    "Backfill chunk attempts that failed, by kind (temporary: retried later; permanent: job fails)",
    ["provider", "kind"],
)
# Both gauges read the shared jobs table, so every process reports the same figure: livemax.
BACKFILL_JOBS = Gauge("backfill_jobs", "Backfill jobs by state (all instances)", ["state"],
                      multiprocess_mode="livemax")
BACKFILL_LAG = Gauge(
    "backfill_lag_seconds", "Age of the oldest queued or running backfill job (0 when none)",
    multiprocess_mode="livemax",
)
BACKFILL_RUNNER_ERRORS = Counter(
    "backfill_runner_errors_total", "Errors of the backfill job runner loop (it backs off)"
)
