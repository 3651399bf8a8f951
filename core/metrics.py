"""Prometheus metric families of the service (default registry).

Labels carry route templates, configured provider ids and fixed enums only, never raw client input.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE_REQUESTS = Counter(
    "cache_requests_total", "Cache look-ups by kind and result (hit, miss, error)",
    ["kind", "result"],
)
PROVIDER_CALLS = Counter(
    "provider_calls_total", "Upstream calls by provider, method and outcome",
    ["provider", "method", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "provider_call_duration_seconds", "Upstream call latency", ["provider", "method"]
)
DATA_SOURCE_ANSWERS = Counter(
    "ohlcv_answers_total", "OHLCV answers by data source mix", ["source"]
)
DEPENDENCY_UP = Gauge("dependency_up", "1 when the dependency answered its last check", ["name"],
                      multiprocess_mode="livemin")
PLUGIN_INSTANCES = Gauge("plugin_instances", "Open plugin instances", ["plugin"],
                         multiprocess_mode="livesum")
DB_QUERY_LATENCY = Histogram(
    "db_query_duration_seconds", "Database query latency by query name", ["query"]
)
# Gauges name their multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set, live* modes combine the
# values of the running worker processes (sum, or the worst one) instead of one series per pid.
DB_POOL_SIZE = Gauge(
    "db_pool_connections", "Open connections of the asyncpg pool", multiprocess_mode="livesum"
)
DB_POOL_IN_USE = Gauge(
    "db_pool_connections_in_use", "Pool connections currently acquired", multiprocess_mode="livesum"
)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections_total", "Requests answered 429 by our rate limiter, by route class",
    ["route_class"],
)
RATE_LIMIT_FALLBACKS = Counter(
    "rate_limit_local_fallback_total", "Rate-limit decisions taken locally because Redis was down"
)
ANSWER_BYTES_USED = Gauge(
    "answer_bytes_used_bytes", "Bytes held by the in-process prepared answers",
    multiprocess_mode="livesum",
)
ANSWER_BYTES_REVISIONS = Counter(
    "answer_bytes_revisions_total", "Revision events applied to the in-process prepared answers"
)
AUTH_FAILURES = Counter(
    "auth_failures_total", "Requests refused 401, by reason (missing, invalid)", ["reason"]
)
PROVIDER_BUDGET_EVENTS = Counter(
    "provider_budget_events_total",
    "Outbound budget events by provider: waited, exhausted, banned (a 418/429 started a pause), "
    "paused (a call refused during a pause), local (decided without Redis)",
    ["provider", "event"],
)
CANDLE_LAG = Gauge(
    "candle_lag_seconds",
    "Seconds since the newest bar of the most behind active channel, by provider and timeframe",
    ["provider", "timeframe"], multiprocess_mode="livemax",
)

#: channel -> lag seconds, per (provider, timeframe): the gauge shows the most behind channel.
_CANDLE_LAGS: dict[tuple[str, str], dict[str, float]] = {}


def set_candle_lag(channel: str, provider: str, timeframe: str, seconds: float) -> None:
    """Record how far behind one polled channel's data is; ``candle_lag_seconds{provider,
    timeframe}`` shows the largest lag among this process's channels of that pair."""
    lags = _CANDLE_LAGS.setdefault((provider, timeframe), {})
    lags[channel] = max(0.0, seconds)
    CANDLE_LAG.labels(provider, timeframe).set(max(lags.values()))


def forget_candle_lag(channel: str) -> None:
    """Drop a channel that is no longer polled here (its series goes when it was the last one)."""
    for (provider, timeframe), lags in list(_CANDLE_LAGS.items()):
        if lags.pop(channel, None) is None:
            continue
        if lags:
            CANDLE_LAG.labels(provider, timeframe).set(max(lags.values()))
        else:
            del _CANDLE_LAGS[(provider, timeframe)]
            CANDLE_LAG.remove(provider, timeframe)


@contextmanager
def observe_query(name: str) -> Iterator[None]:
    """Time one named database query (a fixed name from our code, never SQL text)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        DB_QUERY_LATENCY.labels(name).observe(time.perf_counter() - started)


@contextmanager
def observe_call(provider: str, method: str) -> Iterator[None]:
    """Count and time one upstream call; the outcome label is ``ok`` or the error class name."""
    started, outcome = time.perf_counter(), "ok"
    try:
        yield
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        PROVIDER_CALLS.labels(provider, method, outcome).inc()
        PROVIDER_LATENCY.labels(provider, method).observe(time.perf_counter() - started)

# --- metrics ------------------------------------------------------------
PROVIDER_RETRIES = Counter(
    "provider_retries_total",
    "Upstream calls retried after a temporary error, by configured provider id",
    ["provider"],
)

# --- ws metrics ------------------------------------------------------------
WS_CONNECTIONS = Gauge("ws_connections", "Open WebSocket connections on this instance",
                       multiprocess_mode="livesum")
WS_SUBSCRIPTIONS = Gauge("ws_subscriptions", "Channel subscriptions held by this instance's clients",
                         multiprocess_mode="livesum")
WS_ACTIVE_CHANNELS = Gauge("ws_active_channels", "Channels with subscribers (or in grace) here",
                           multiprocess_mode="livesum")
WS_POLLING_CHANNELS = Gauge("ws_polling_channels", "Channels this instance polls (holds the lease)",
                            multiprocess_mode="livesum")
WS_CLUSTER_MODE = Gauge(
    "ws_cluster_mode", "1 when fan-out and leases go through Redis, 0 in in-memory mode",
    multiprocess_mode="livemin",
)
WS_FRAMES_SENT = Counter("ws_frames_sent_total", "Frames written to clients", ["type"])
WS_CLIENTS_DROPPED = Counter(
    "ws_clients_dropped_total", "Clients disconnected by the server", ["reason"]
)
WS_POLLS = Counter("ws_polls_total", "Upstream polls made by subscription workers", ["provider"])
WS_POLL_ERRORS = Counter(
    "ws_poll_errors_total", "Failed upstream polls of subscription workers", ["provider", "code"]
)
WS_STORAGE_ERRORS = Counter(
    "ws_storage_errors_total", "Closed 1m bars a worker could not write yet (retried)"
)
BAR_REVISIONS = Counter(
    "bar_revisions_total", "Stored closed 1m bars whose values changed (revisions announced)",
    ["provider"],
)
WS_FANOUT_LATENCY = Histogram(
    "ws_fanout_latency_seconds", "From the poll result to the frame written to a client",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# --- stream feed metrics (services.live.streams) -----------------------------------------------
STREAM_RECONNECTS = Counter(
    "stream_reconnects_total",
    "Kline streams that failed and fell back to polling, by reason (refused, dropped, malformed,"
    " silent)", ["provider", "reason"],
)
STREAM_DISAGREEMENTS = Counter(
    "stream_rest_disagreements_total",
    "Closed bars whose stream values differed from REST klines (published as revisions)",
    ["provider"],
)
STREAM_MALFORMED = Counter(
    "stream_malformed_frames_total", "Stream frames skipped because they did not parse",
    ["provider"],
)
STREAM_LAG = Histogram(
    "stream_event_lag_seconds", "From the exchange's event time of a stream update to our publish",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# --- backfill metrics ------------------------------------------------------------
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

# --- provider circuit breakers (services/upstream/breaker.py) ----------------------------------
BREAKER_STATE = Gauge(
    "provider_breaker_state", "Circuit breaker of a provider: 0 closed, 1 half-open, 2 open",
    ["provider"], multiprocess_mode="livemax",
)
BREAKER_TRANSITIONS = Counter(
    "provider_breaker_transitions_total",
    "Circuit breaker state changes seen by this process, by the state entered", ["provider", "state"],
)
BREAKER_REJECTIONS = Counter(
    "provider_breaker_rejections_total", "Calls refused at once because the breaker was open",
    ["provider"],
)
CREDENTIAL_LOOKUP_FAILURES = Counter(
    "credential_lookup_failures_total",
    "Requests that could not read their user's exchange credentials (PostgreSQL down) and used "
    "the shared instance",
)
STALE_ANSWERS = Counter(
    "stale_answers_total", "Answers served from the last known data because the provider failed",
    ["provider", "endpoint"],
)
WARMUP_QUERIES = Counter(
    "warmup_queries_total", "Queries answered by cache warming at start, by outcome (ok, failed)",
    ["outcome"],
)
