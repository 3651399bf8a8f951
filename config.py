"""Configuration classes; every setting can be overridden from an environment variable.

``load_config(name)`` builds the config for ``APP_ENV`` (``development``, ``production``,
``testing``), applies the environment, and ``validate()`` fails fast naming the variable.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import click


class ConfigError(click.ClickException, ValueError):
    """A configuration value is missing or wrong; the message names the variable.

    A ``click.ClickException``: a ``quart`` CLI command (``run``, ``migrate``, ``backfill``,
    ``api-key``) whose app cannot be built prints ``Error: <message>`` and exits 1, without a
    traceback. Other entry points catch it and print the message (``serve.py``'s ``main``).
    """


def _bool(raw: str) -> bool:
    if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError(f"must be true or false (also 1/0, yes/no, on/off), got {raw!r}")
    return raw.lower() in ("1", "true", "yes", "on")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be an integer, got {raw!r}") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None


def _json_object(raw: str) -> dict[str, Any]:
    """A JSON object; the message never echoes the value (some hold credentials)."""
    try:
        value = json.loads(raw or "{}")
    except ValueError as exc:  # json.JSONDecodeError is one
        raise ValueError(f"must be a JSON object ({exc.msg} at character {exc.pos})"
                         if isinstance(exc, json.JSONDecodeError) else "must be a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got a JSON {type(value).__name__}")
    return value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TRUST_FORWARDED_FOR_GONE = ("TRUST_FORWARDED_FOR is replaced by TRUSTED_PROXIES: name your proxies' "
                            "addresses or CIDRs (e.g. TRUSTED_PROXIES=172.16.0.0/12)")


def parse_trusted_proxies(raw: str | Iterable[str] | None) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` (CIDRs or addresses, comma-separated or a JSON list) as networks;
    raises ``ConfigError`` naming a malformed entry."""
    if not raw:
        return ()
    items: Any = raw
    if isinstance(raw, str):
        text = raw.strip()
        items = json.loads(text) if text.startswith("[") else text.split(",")
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ConfigError(f"TRUSTED_PROXIES: {text!r} is not an address or CIDR") from exc
    return tuple(networks)


class BaseConfig:
    APP_ENV = "development"
    HOST = "127.0.0.1"
    PORT = 8000
    DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
    #: Schema for our tables (tests use one each); "public" by default.
    DATABASE_SCHEMA = "public"
    DB_POOL_MIN = 1
    DB_POOL_MAX = 10
    DB_COMMAND_TIMEOUT = 10.0
    DB_CONNECT_TIMEOUT = 3.0
    #: auto: TimescaleDB when the extension can be created, else plain PostgreSQL.
    STORAGE_MODE = "auto"
    TIMESCALE_CHUNK_INTERVAL = "7 days"
    #: Start offset of each continuous aggregate's refresh policy, and how often policies run.
    TIMESCALE_REFRESH_LOOKBACK = "3 days"
    TIMESCALE_REFRESH_SCHEDULE = "5 minutes"
    #: Compression / retention policies on the 1m hypertable (e.g. "30 days"); empty = off.
    TIMESCALE_COMPRESSION_AFTER = ""
    TIMESCALE_RETENTION_AFTER = ""
    REDIS_URL = "redis://127.0.0.1:6379/0"
    REDIS_PREFIX = "md"
    REDIS_TIMEOUT = 1.0
    REDIS_MAX_CONNECTIONS = 200
    #: Seconds a closed-range answer stays cached; forming-range answers use CACHE_TTL_FORMING.
    CACHE_TTL_CLOSED = 86_400
    CACHE_TTL_FORMING = 5
    CACHE_TTL_SYMBOLS = 3_600
    #: How far back Redis caches bars and answers (seconds); older history is served from the
    #: database, so old ranges cannot grow Redis (services/bars/cache.py).
    CACHE_RECENT_SECONDS = 7 * 86_400
    #: Memory bound (bytes) of the in-process answer bytes (closed-range /ohlcv answers with their
    #: ETag and br/gzip variants, least recently used out first); 0 switches them off.
    ANSWER_BYTES_MAX = 64 * 1024 * 1024
    #: How long a dependency marked down is skipped before it is tried again (seconds).
    DEPENDENCY_RETRY_AFTER = 2.0
    LOG_LEVEL = "INFO"
    LOG_FORMAT = "text"  # text | json
    #: JSON: logger name to level, over the defaults (ccxt INFO: at DEBUG it logs every request).
    LOG_LEVELS: dict[str, str] = {}
    #: One INFO line per HTTP request on the "access" logger (client, request, status, ms).
    ACCESS_LOG = False
    SHUTDOWN_TIMEOUT = 5.0
    # Plugins and providers
    ENABLED_MARKETS = "sim,crypto,stocks"
    CCXT_EXCHANGES = "binance,kraken,coinbase,bybit,okx"
    CCXT_MARKET_TYPES = "spot"
    PROVIDER_URLS: dict[str, str] = {}
    #: Provider id -> ws(s) base URL replacing the exchange's stream URL base (as PROVIDER_URLS).
    PROVIDER_WS_URLS: dict[str, str] = {}
    #: JSON: exchange id to {"apiKey", "secret", "password"?, "testnet"?}; public access otherwise.
    CCXT_CREDENTIALS: dict[str, dict[str, object]] = {}
    PROVIDER_TIMEOUT = 10.0
    PROVIDER_RETRIES = 3
    PROVIDER_RETRY_MAX_WAIT = 10.0
    PLUGIN_IDLE_TIMEOUT = 600.0
    #: Exchange-client instances kept open in all, and per user (a user's own credentials get
    #: their own, one per provider); past either the least recently used one is closed.
    PLUGIN_MAX_INSTANCES = 256
    PLUGIN_MAX_INSTANCES_PER_USER = 8
    ALPACA_API_KEY_ID = ""
    ALPACA_API_SECRET_KEY = ""
    ALPACA_FEED = "iex"
    ALPACA_ADJUSTMENT = "raw"
    SIM_SEED = 42
    # Request limits
    OHLCV_DEFAULT_LIMIT = 500
    OHLCV_MAX_LIMIT = 5000
    #: Most upstream calls one /ohlcv request may make before the rest is left to a backfill job.
    OHLCV_MAX_PROVIDER_CALLS = 10
    #: GET /export (services/export/): most bars one export may span (400 beyond), bars per
    #: batch (a Parquet row group, an Arrow record batch), and the longest one export may stream.
    EXPORT_MAX_BARS = 10_000_000
    #: Most exports one instance streams at once (each holds a pool connection throughout, so
    #: keep it below DB_POOL_MAX); one more is refused with 503 dependency_unavailable.
    EXPORT_MAX_CONCURRENT = 4
    EXPORT_BATCH_ROWS = 65_536
    EXPORT_TIMEOUT = 3600.0
    #: Seconds within which every /ohlcv answer and WebSocket snapshot comes: from stored data
    #: (X-Data-Incomplete) when the provider is slower, else 503 provider_unavailable; /symbols
    #: and /ticker too.
    REQUEST_DEADLINE = 10.0
    #: Seconds /udf/search over every exchange waits for their symbol lists (then answers what is
    #: known: an exchange that has not answered counts with its last list, if any).
    UDF_SEARCH_SECONDS = 1.5
    # Operators' side (app_extensions/auth.py, ratelimit.py, cors.py; services/upstream/budget.py)
    #: Require an API key (X-API-Key, or the WebSocket handshake's header / api_key parameter).
    AUTH_ENABLED = False
    #: Accepted keys as sha256 hex digests: a JSON list or comma-separated (also table api_keys).
    API_KEYS: str | list[str] = ""
    #: Operators' keys (sha256 hex digests, as API_KEYS; accepted as keys too): they see every
    #: client's backfill jobs in GET /backfill, where other clients see their own.
    OPERATOR_KEYS: str | list[str] = ""
    #: Also accept keys from the api_keys table (migration 020); looked-up keys cached this long.
    API_KEYS_FROM_DB = True
    API_KEY_CACHE_TTL = 30.0
    #: When set, GET /metrics needs "Authorization: Bearer <token>" (else it is open).
    METRICS_TOKEN = ""
    RATE_LIMIT_ENABLED = True
    #: JSON: route class (default, ohlcv, export, backfill, ws) to "requests/seconds", per key or client IP.
    RATE_LIMITS: dict[str, str] = {}
    #: CIDRs of the reverse proxies whose X-Forwarded-For is believed (comma-separated or a JSON
    #: list); the client is the last address not in them. Empty: the header is ignored.
    TRUSTED_PROXIES: str | list[str] = ""
    #: Replaced by TRUSTED_PROXIES: true is refused at start (it let any peer pick its identity).
    TRUST_FORWARDED_FOR = False
    #: Comma-separated origins allowed by CORS ("*" for any, "http://localhost:*" for any port);
    #: empty: no CORS headers. Development allows localhost and 127.0.0.1 on any port.
    CORS_ORIGINS = ""
    #: Comma-separated origins allowed to open the WebSocket; empty: any (or none sent).
    WS_ALLOWED_ORIGINS = ""
    MAX_BODY_BYTES = 64 * 1024
    #: Longest a request body may take to arrive in full (seconds; then 408), however it trickles.
    REQUEST_BODY_TIMEOUT = 10.0
    #: JSON: provider id to "calls/seconds", shared by every instance; merged over the defaults.
    PROVIDER_BUDGETS: dict[str, str] = {}
    #: Longest a call waits for budget before it fails as provider_unavailable (seconds).
    PROVIDER_BUDGET_MAX_WAIT = 2.0
    #: Pause after an exchange's 418/429 that named no Retry-After (seconds).
    PROVIDER_BAN_DEFAULT = 10.0
    #: Fernet keys encrypting users' exchange credentials, newest first (comma-separated or a JSON
    #: list); empty: /credentials answers 503. Lookups are cached this many seconds per instance.
    CREDENTIALS_KEYS = ""
    CREDENTIALS_CACHE_TTL = 5.0
    #: Seconds the last good ticker of a symbol is kept to answer (stale) while its provider fails.
    TICKER_STALE_TTL = 86_400
    #: Cache warming at start (services/bars/warmup.py): on/off, the time and upstream-call budgets,
    #: how many of the most requested ranges, the bars of each live channel's snapshot, how far
    #: back "recent" reaches, and how often ranges and live channels are recorded (seconds).
    WARMUP_ENABLED = True
    WARMUP_MAX_SECONDS = 20.0
    WARMUP_MAX_CALLS = 50
    WARMUP_TOP_RANGES = 20
    WARMUP_SNAPSHOT_BARS = 100
    WARMUP_LOOKBACK_SECONDS = 3600.0
    WARMUP_RECORD_SECONDS = 15.0
    #: Circuit breaker per provider (services/upstream/breaker.py): consecutive temporary failures
    #: that open it, seconds it stays open, and the longest a half-open probe call may take.
    BREAKER_FAILURE_THRESHOLD = 5
    BREAKER_OPEN_SECONDS = 30.0
    BREAKER_PROBE_SECONDS = 15.0
    #: A call cancelled after running this long (cut off by REQUEST_DEADLINE) counts as a failure.
    BREAKER_SLOW_SECONDS = 5.0
    #: Timeout of each readiness check (seconds), and how long the dependency checks are reused
    #: (concurrent probes share one run): a flood of /health/ready costs them one check a second.
    READINESS_TIMEOUT = 0.5
    READINESS_CACHE_SECONDS = 1.0
    # Backfill (services/backfill/; docs/backfill.md)
    #: Most concurrent upstream calls per provider made by backfills of this instance.
    BACKFILL_CONCURRENCY = 4
    #: Jobs one instance runs at once.
    BACKFILL_MAX_JOBS = 2
    #: Seconds between the job runner's looks for queued jobs (a new job wakes it at once).
    BACKFILL_POLL_INTERVAL = 2.0
    #: Lease of a running job (seconds), renewed by its runner; a dead instance's job resumes after it.
    BACKFILL_LEASE_SECONDS = 30.0
    #: Backoff of a chunk's retries after temporary errors: first wait and cap (seconds).
    BACKFILL_RETRY_BASE = 1.0
    BACKFILL_RETRY_MAX_WAIT = 60.0
    #: How long a chunk keeps retrying temporary errors before its job fails (seconds).
    BACKFILL_PATIENCE = 3600.0
    #: How long a job retries a failing provider in its runner slot before it yields the slot to
    #: other jobs and waits queued (seconds; at once when the provider's breaker is open).
    BACKFILL_YIELD_AFTER = 30.0
    #: Longest range one backfill job may cover (days).
    BACKFILL_MAX_RANGE_DAYS = 3660
    #: Queued jobs one client (API key, else IP) may have; one more is 429 too_many_jobs. A
    #: request overlapping a queued job widens that job instead (up to BACKFILL_MAX_RANGE_DAYS).
    BACKFILL_MAX_QUEUED_PER_CLIENT = 10
    #: Longest backfill a GET /ohlcv queues by itself (days, the latest part); more: POST /backfill.
    BACKFILL_AUTO_MAX_DAYS = 7
    #: Also put backfilled 1m bars into the Redis 1m cache: those of the latest BACKFILL_CACHE_DAYS.
    BACKFILL_WRITE_CACHE = True
    BACKFILL_CACHE_DAYS = 7.0
    #: Run the job runner in this instance (off: the API still queues jobs for other instances).
    BACKFILL_RUNNER = True
    # Live candles over WebSocket (blueprints/websocket.py, services/live/; cluster transport: services/bus/)
    #: Subscriptions one connection may hold; larger client messages get an invalid_message error.
    WS_MAX_SUBSCRIPTIONS = 50
    #: Open connections per client identity (API key, else IP) on one instance; one more is
    #: refused at the handshake with 429 too_many_connections.
    WS_MAX_CONNECTIONS_PER_CLIENT = 500
    #: Live channels (each a poller or stream) per instance; a subscribe that would open one more
    #: gets a too_many_subscriptions error frame.
    WS_MAX_CHANNELS = 1000
    #: With auth on, the keys of open connections are re-checked this often; a revoked key's
    #: connections are closed with 1008.
    WS_AUTH_RECHECK_SECONDS = 20.0
    WS_MAX_MESSAGE_BYTES = 4096
    #: Client messages received but not yet handled; a client sending faster is closed with 1013.
    WS_MAX_PENDING_MESSAGES = 128
    #: Frames queued per connection; a client this far behind is closed with 1013.
    WS_SEND_QUEUE = 256
    #: Server WebSocket pings (the server's setting: blueprints/ws_server.py); a dead peer is dropped.
    WS_HEARTBEAT_SECONDS = 20.0
    #: Accept a client's permessage-deflate offer (Uvicorn's ws_per_message_deflate; Hypercorn
    #: always accepts it, see blueprints/ws_server.py). Off: our frames are ~150 bytes, and under
    #: Uvicorn a deflating connection holds ~156 KiB against ~35 (docs/performance.md).
    WS_PER_MESSAGE_DEFLATE = False
    #: A frame whose write has not completed after this long marks a dead or stalled peer (1013).
    WS_SEND_TIMEOUT_SECONDS = 30.0
    #: A channel's poller keeps running this long after its last local subscriber left.
    WS_UNSUBSCRIBE_GRACE_SECONDS = 10.0
    #: Subscription snapshots fetched at once (a reconnect storm queues instead of exhausting pools).
    WS_SNAPSHOT_CONCURRENCY = 16
    #: JSON: timeframe to seconds between polls of the forming bar; others use the default.
    POLL_INTERVALS: dict[str, float] = {"1m": 2.0, "3m": 2.0, "5m": 3.0, "15m": 3.0, "30m": 5.0}
    POLL_INTERVAL_DEFAULT = 5.0
    #: JSON: provider id to the least seconds between polls (default: the plugin's capability).
    POLL_PROVIDER_MIN_INTERVALS: dict[str, float] = {}
    #: Seconds after a bucket ends before its final bar is fetched (exchanges settle late trades).
    POLL_CLOSE_DELAY_SECONDS = 0.5
    POLL_MAX_BACKOFF_SECONDS = 30.0
    #: Most past bars a poller catches up after an outage or a hand-over (older: REST/backfill).
    POLL_MAX_CATCHUP_BARS = 5000
    #: Closed buckets that ended this recently are fetched again by each poll; a changed value is
    #: published as a revision (``revised: true``) and written through to storage and caches.
    POLL_REVISION_SECONDS = 120.0
    #: Lease of a channel's poller in Redis, renewed every third of it; a dead holder's channel
    #: moves to another instance with subscribers within about 1.3x this.
    LEASE_TTL_SECONDS = 6.0
    #: Live channels of exchanges with CCXT Pro kline streams are fed by the stream (see
    #: docs/websocket.md); off: every channel polls.
    STREAM_FEEDS = True
    #: A stream silent this long counts as down (falls back to polling).
    STREAM_SILENCE_SECONDS = 10.0
    #: Closed stream bars are checked against REST klines (one call for all unchecked ones) once
    #: the oldest unchecked one closed this long ago.
    STREAM_VERIFY_SECONDS = 90.0
    #: After a stream failure the channel polls this long before it tries the stream again,
    #: doubling per failure up to STREAM_RETRY_MAX_SECONDS.
    STREAM_RETRY_SECONDS = 5.0
    STREAM_RETRY_MAX_SECONDS = 300.0

    def __init__(self) -> None:
        self._apply_env()

    def _apply_env(self) -> None:
        for name in dir(type(self)):
            # APP_ENV picks the class (load_config); it is not an override.
            if not name.isupper() or name not in os.environ or name == "APP_ENV":
                continue
            raw, default = os.environ[name], getattr(self, name)
            parse: Callable[[str], Any] = (
                _bool if isinstance(default, bool) else _int if isinstance(default, int)
                else _float if isinstance(default, float)
                else _json_object if isinstance(default, dict) else str)
            try:
                setattr(self, name, parse(raw))
            except ValueError as exc:
                raise ConfigError(f"{name} {exc}") from None

    def validate(self) -> None:
        """Fail fast with the variable's name and what is wrong."""
        if not str(self.DATABASE_URL).startswith(("postgresql://", "postgres://")):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
        if not str(self.REDIS_URL).startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must be a redis:// URL")
        if self.BREAKER_FAILURE_THRESHOLD < 1:
            raise ConfigError("BREAKER_FAILURE_THRESHOLD must be at least 1")
        for name in ("BREAKER_OPEN_SECONDS", "BREAKER_PROBE_SECONDS", "STREAM_SILENCE_SECONDS",
                     "STREAM_VERIFY_SECONDS", "STREAM_RETRY_SECONDS", "STREAM_RETRY_MAX_SECONDS",
                     "UDF_SEARCH_SECONDS"):
            if not 0 < float(getattr(self, name)) < math.inf:  # also refuses nan
                raise ConfigError(f"{name} must be a positive number of seconds")
        for name, scheme in (("PROVIDER_URLS", "http"), ("PROVIDER_WS_URLS", "ws")):
            urls = getattr(self, name)
            if not isinstance(urls, dict) or not all(isinstance(v, str) and v.startswith(
                    (f"{scheme}://", f"{scheme}s://")) for v in urls.values()):
                raise ConfigError(f"{name} must be a JSON object of provider id to {scheme}(s) URL")
        for name, allowed in (("STORAGE_MODE", ("auto", "timescale", "plain")), ("LOG_FORMAT", ("text", "json"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}")
        levels = self.LOG_LEVELS
        if not isinstance(levels, dict) or not all(
                isinstance(v, str) and isinstance(logging.getLevelName(v.upper()), int) for v in levels.values()):
            raise ConfigError('LOG_LEVELS must be a JSON object of logger name to level, e.g. {"ccxt": "DEBUG"}')
        if not isinstance(logging.getLevelName(str(self.LOG_LEVEL).upper()), int):
            raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if not 1 <= self.DB_POOL_MIN <= self.DB_POOL_MAX:
            raise ConfigError("DB_POOL_MIN and DB_POOL_MAX must satisfy 1 <= min <= max")
        if self.TRUST_FORWARDED_FOR:
            raise ConfigError(TRUST_FORWARDED_FOR_GONE)
        parse_trusted_proxies(self.TRUSTED_PROXIES)
        if int(self.MAX_BODY_BYTES) < 1:
            raise ConfigError("MAX_BODY_BYTES must be positive")
        for name in ("BACKFILL_MAX_QUEUED_PER_CLIENT", "PLUGIN_MAX_INSTANCES", "PLUGIN_MAX_INSTANCES_PER_USER"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if not 0 < float(self.REQUEST_BODY_TIMEOUT) < math.inf:
            raise ConfigError("REQUEST_BODY_TIMEOUT must be a positive number of seconds")
        for name in ("CACHE_RECENT_SECONDS", "READINESS_CACHE_SECONDS"):
            if not 0 <= float(getattr(self, name)) < math.inf:
                raise ConfigError(f"{name} must be a non-negative number of seconds")
        if not 0 < self.PORT < 65536:
            raise ConfigError("PORT must be between 1 and 65535")
        for name in ("CACHE_TTL_CLOSED", "CACHE_TTL_FORMING", "OHLCV_MAX_LIMIT", "PROVIDER_RETRIES",
                     "ANSWER_BYTES_MAX"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.OHLCV_MAX_LIMIT > 5000:
            raise ConfigError("OHLCV_MAX_LIMIT must not exceed 5000 (the maximum in docs/api.md)")
        if not 1 <= self.OHLCV_DEFAULT_LIMIT <= self.OHLCV_MAX_LIMIT:
            raise ConfigError("OHLCV_DEFAULT_LIMIT must be between 1 and OHLCV_MAX_LIMIT")
        for name in ("EXPORT_MAX_BARS", "EXPORT_MAX_CONCURRENT", "EXPORT_BATCH_ROWS", "EXPORT_TIMEOUT"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be positive")

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in dir(self) if name.isupper()}


class DevelopmentConfig(BaseConfig):
    APP_ENV = "development"
    LOG_LEVEL = "DEBUG"
    #: A dashboard served by a dev server on this machine (any port) may call the API.
    CORS_ORIGINS = "http://localhost:*,http://127.0.0.1:*"


class ProductionConfig(BaseConfig):
    APP_ENV = "production"
    LOG_FORMAT = "json"


class TestingConfig(BaseConfig):
    APP_ENV = "testing"
    LOG_LEVEL = "WARNING"
    PROVIDER_RETRY_MAX_WAIT = 0.2
    PLUGIN_IDLE_TIMEOUT = 60.0
    DEPENDENCY_RETRY_AFTER = 0.2
    #: Outage tests expect recovery within seconds, as they do of DEPENDENCY_RETRY_AFTER.
    BREAKER_OPEN_SECONDS = 1.0


CONFIGS: dict[str, type[BaseConfig]] = {c.APP_ENV: c for c in (DevelopmentConfig, ProductionConfig, TestingConfig)}


def load_config(env: str | None = None) -> BaseConfig:
    """The config for ``env`` (default ``APP_ENV``), with the environment applied."""
    name = env or os.environ.get("APP_ENV", "development")
    if name not in CONFIGS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(CONFIGS)}, got {name!r}")
    return CONFIGS[name]()

