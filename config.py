"""Every setting, declared once: its name (the environment variable), type, default, check and doc.

``BaseConfig`` declares each setting as a ``Setting``: the type is its default's (bool, int, float,
str, or a JSON object), ``by_env`` gives other defaults for an ``APP_ENV``, ``check`` says what is
wrong with a value. From these declarations come:

- the config: ``load_config(name)`` builds the config of ``APP_ENV`` (``development``,
  ``production``, ``testing``), applies the environment, and ``validate()`` fails fast naming the
  variable;
- the services' frozen settings (``services/settings.py``: a field names its key, and its default
  and check are the declaration's);
- the settings table of ``docs/configuration.md`` (``settings_table()``; ``make docs`` writes it, and
  a test compares the two).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import click

T = TypeVar("T")
#: What a check says of a wrong value ("must be at least 1"); None when the value is right.
Check = Callable[[Any], "str | None"]


class ConfigError(click.ClickException, ValueError):
    """A configuration value is missing or wrong; the message names the variable.

    A ``click.ClickException``: a ``quart`` CLI command (``run``, ``migrate``, ``backfill``,
    ``api-key``) whose app cannot be built prints ``Error: <message>`` and exits 1, without a
    traceback. Other entry points catch it and print the message (``serve.py``'s ``main``).
    """


# --- Parsing an environment variable by the setting's type --------------------------------------
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


# --- Checks: each returns what is wrong with a value, or None -----------------------------------
def at_least(low: int) -> Check:
    return lambda v: None if int(v) >= low else f"must be at least {low}"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must not be negative"


def positive(v: Any) -> str | None:
    return None if 0 < float(v) < math.inf else "must be positive"


def seconds(v: Any) -> str | None:
    """A positive, finite number of seconds (nan refused)."""
    return None if 0 < float(v) < math.inf else "must be a positive number of seconds"


def seconds_or_zero(v: Any) -> str | None:
    return None if 0 <= float(v) < math.inf else "must be a non-negative number of seconds"


def port(v: Any) -> str | None:
    return None if 0 < int(v) < 65536 else "must be between 1 and 65535"


def names(raw: str | Iterable[Any] | None) -> tuple[str, ...]:
    """A comma-separated setting (or a list) as its stripped, non-empty items."""
    items = raw.split(",") if isinstance(raw, str) else list(raw or [])
    return tuple(str(item).strip() for item in items if str(item).strip())


def names_something(what: str) -> Check:
    """A comma-separated list (or a list) with at least one name."""
    return lambda v: None if names(v) else f"must name at least one {what}"


def one_of(*allowed: str) -> Check:
    return lambda v: None if v in allowed else f"must be {', '.join(allowed[:-1])} or {allowed[-1]}"


def url(*schemes: str) -> Check:
    return lambda v: None if str(v).startswith(tuple(f"{s}://" for s in schemes)) \
        else f"must be a {schemes[0]}:// URL"


def url_map(scheme: str) -> Check:
    """A JSON object of provider id to an ``http(s)``/``ws(s)`` URL."""
    return lambda v: None if isinstance(v, dict) and all(
        isinstance(u, str) and u.startswith((f"{scheme}://", f"{scheme}s://")) for u in v.values()
    ) else f"must be a JSON object of provider id to {scheme}(s) URL"


def log_level(v: Any) -> str | None:
    return None if isinstance(logging.getLevelName(str(v).upper()), int) \
        else "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"


def log_levels(v: Any) -> str | None:
    return None if isinstance(v, dict) and all(isinstance(x, str) and log_level(x) is None for x in v.values()) \
        else 'must be a JSON object of logger name to level, e.g. {"ccxt": "DEBUG"}'


def limit_at_most(top: int) -> Check:
    return lambda v: non_negative(v) or (None if v <= top else f"must not exceed {top} (the maximum in docs/api.md)")


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


def _trusted_proxies(v: Any) -> str | None:
    parse_trusted_proxies(v)  # raises ConfigError naming the entry
    return None


def _trust_forwarded_for(v: Any) -> str | None:
    return TRUST_FORWARDED_FOR_GONE.removeprefix("TRUST_FORWARDED_FOR ") if v else None


# --- The declaration ------------------------------------------------------------------------------
class Section:
    """A heading of the settings table: the settings declared after it, up to the next one."""

    def __init__(self, title: str) -> None:
        self.title = title


class Setting(Generic[T]):
    """One setting: the default (its type is the setting's), a line of docs, a check, and the
    defaults of other ``APP_ENV``s. On a config object it reads as the value (a descriptor)."""

    def __init__(self, default: T, doc: str, check: Check | None = None,
                 by_env: Mapping[str, T] | None = None) -> None:
        self.name = ""
        self.default = default
        self.doc = doc
        self.check = check
        self.by_env: Mapping[str, T] = by_env or {}

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def default_for(self, env: str) -> T:
        value = self.by_env.get(env, self.default)
        return dict(value) if isinstance(value, dict) else value  # type: ignore[return-value]

    def parse(self, raw: str) -> T:
        """The environment's text as this setting's type; ``ConfigError`` naming it if it is not."""
        kind = type(self.default)
        parse: Callable[[str], Any] = (_bool if kind is bool else _int if kind is int else _float
                                       if kind is float else _json_object if kind is dict else str)
        try:
            return parse(raw)  # type: ignore[no-any-return]
        except ValueError as exc:
            raise ConfigError(f"{self.name} {exc}") from None

    def validate(self, value: Any) -> None:
        """Raise ``ConfigError`` naming this setting when its check refuses ``value``."""
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise ConfigError(f"{self.name} {problem}")

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        return obj.__dict__[self.name]  # type: ignore[no-any-return]

    def __set__(self, obj: object, value: T) -> None:
        obj.__dict__[self.name] = value


class BaseConfig:
    """Every setting, in the order of docs/configuration.md's table."""

    _process = Section("Process")
    APP_ENV = Setting(
        "development",
        "`development` (DEBUG logs), `production` (JSON logs), `testing`",
        check=one_of("development", "production", "testing"))
    HOST = Setting("127.0.0.1", "address `make run` / `python serve.py` listen on")
    PORT = Setting(8000, "port `make run` / `python serve.py` listen on", check=port)
    LOG_LEVEL = Setting(
        "INFO",
        "root log level; every line carries the request id. The `quart` CLI's commands (`--help`, `migrate`, "
        "`backfill`, `api-key`) log WARNING and above unless `LOG_LEVEL` is set in the environment",
        check=log_level, by_env={"development": "DEBUG", "testing": "WARNING"})
    LOG_FORMAT = Setting(
        "text",
        "`text` or `json` (one JSON object per line; `ts` is ISO 8601 in UTC with milliseconds, "
        "`2024-01-01T00:00:00.123Z`)",
        check=one_of("text", "json"), by_env={"production": "json"})
    LOG_LEVELS: Setting[dict[str, str]] = Setting(
        {"ccxt": "INFO", "hypercorn.access": "WARNING", "redis": "INFO", "access": "INFO"},
        "JSON object of logger name to level, merged over the default (at `DEBUG` CCXT logs every request it "
        "makes, headers included), e.g. `{\"ccxt\": \"DEBUG\"}`",
        check=log_levels)
    ACCESS_LOG = Setting(
        False,
        "one `INFO` line per HTTP request on the `access` logger: client, method, path and query (an `api_key` "
        "value blanked), status, bytes, milliseconds, with the request id. Rate-limit refusals answered before "
        "the app (the early path) and WebSocket frames are not in it; `/metrics` counts every request")
    SHUTDOWN_TIMEOUT = Setting(
        5.0,
        "seconds each extension gets to close (workers, plugins, Redis, pool); under `make run`, also how long "
        "WebSocket clients get to go after their 1001 close")
    PROMETHEUS_MULTIPROC_DIR = Setting(
        "",
        "set when the server runs several workers: see the README's [Running several "
        "instances](../README.md#running-several-instances) (read by prometheus-client)")
    SERVER = Setting(
        "uvicorn",
        "the server `python serve.py` (and `make run`) runs: `uvicorn`, `hypercorn` or `granian` (also "
        "`--server`)",
        check=one_of("uvicorn", "hypercorn", "granian"))
    LOOP = Setting(
        "uvloop",
        "the event loop `python serve.py` runs on: `uvloop` or `asyncio` (also `--loop`)",
        check=one_of("uvloop", "asyncio"))

    _storage = Section("Storage")
    DATABASE_URL = Setting(
        "postgresql://postgres@127.0.0.1:5432/test",
        "PostgreSQL (TimescaleDB optional)",
        check=url("postgresql", "postgres"))
    DATABASE_SCHEMA = Setting("public", "schema of our tables")
    DB_POOL_MIN = Setting(1, "fewest asyncpg connections kept open per process", check=at_least(1))
    DB_POOL_MAX = Setting(10, "most asyncpg connections per process", check=at_least(1))
    DB_COMMAND_TIMEOUT = Setting(10.0, "seconds per SQL statement")
    DB_CONNECT_TIMEOUT = Setting(3.0, "seconds to connect")
    STORAGE_MODE = Setting(
        "auto",
        "`auto` (TimescaleDB when the extension can be created), `timescale`, `plain`",
        check=one_of("auto", "timescale", "plain"))
    TIMESCALE_CHUNK_INTERVAL = Setting("7 days", "hypertable chunk interval")
    TIMESCALE_REFRESH_LOOKBACK = Setting("3 days", "start offset of each continuous aggregate's refresh policy")
    TIMESCALE_REFRESH_SCHEDULE = Setting("5 minutes", "how often the refresh policies run")
    TIMESCALE_COMPRESSION_AFTER = Setting("", "compress 1m chunks older than this (e.g. `30 days`); empty: off")
    TIMESCALE_RETENTION_AFTER = Setting("", "drop 1m chunks older than this; empty: off (do not backfill beyond it)")
    REDIS_URL = Setting(
        "redis://127.0.0.1:6379/0",
        "cache, rate limits, budgets, WebSocket fan-out and leases",
        check=url("redis", "rediss", "unix"))
    REDIS_PREFIX = Setting("md", "prefix of every Redis key (instances of one cluster share it)")
    REDIS_TIMEOUT = Setting(1.0, "seconds per Redis command and connect (and to wait for a free pooled connection)")
    REDIS_MAX_CONNECTIONS = Setting(200, "Redis connections per process; a burst beyond it waits instead of failing")
    DEPENDENCY_RETRY_AFTER = Setting(
        2.0,
        "seconds a failed PostgreSQL/Redis is skipped before it is tried again",
        by_env={"testing": 0.2})
    CACHE_TTL_CLOSED = Setting(
        86_400,
        "seconds a closed-range answer (and the 1m bar cache) stays in Redis",
        check=non_negative)
    CACHE_RECENT_SECONDS = Setting(
        604_800,
        "how far back Redis caches 1m bars and answers (7 days); older history is served from PostgreSQL and "
        "never written to Redis, so old ranges cannot grow it",
        check=seconds_or_zero)
    CACHE_TTL_FORMING = Setting(5, "seconds an answer holding the forming bar stays cached", check=non_negative)
    ANSWER_BYTES_MAX = Setting(
        67_108_864,
        "bytes of closed `/ohlcv` answers (with their br/gzip variants) kept prepared in each process, least "
        "recently used out first; `0`: off",
        check=non_negative)
    CACHE_TTL_SYMBOLS = Setting(3600, "seconds a provider's symbol list is reused")

    _markets_and_providers = Section("Markets and providers")
    ENABLED_MARKETS = Setting("sim,crypto,stocks", "markets served (comma-separated)")
    CCXT_EXCHANGES = Setting("binance,kraken,coinbase,bybit,okx", "CCXT exchange ids of the `crypto` market")
    CCXT_MARKET_TYPES = Setting("spot", "CCXT market types loaded (comma-separated; the first is the default type)",
                                check=names_something("CCXT market type (e.g. spot)"))
    CCXT_CREDENTIALS: Setting[dict[str, dict[str, object]]] = Setting(
        {},
        "JSON: exchange id to `{\"apiKey\", \"secret\", \"password\"?, \"testnet\"?}`")
    PROVIDER_URLS: Setting[dict[str, str]] = Setting(
        {},
        "JSON: provider id to a base URL replacing the provider's own (proxy, mirror, emulator)",
        check=url_map("http"))
    PROVIDER_WS_URLS: Setting[dict[str, str]] = Setting(
        {},
        "JSON: provider id to a ws(s) base URL replacing the exchange's stream URL base; a provider whose REST is"
        " overridden but whose streams are not is polled, never streamed",
        check=url_map("ws"))
    PROVIDER_TIMEOUT = Setting(10.0, "seconds per upstream HTTP request")
    PROVIDER_RETRIES = Setting(3, "retries of temporary upstream errors after the first attempt", check=non_negative)
    PROVIDER_RETRY_MAX_WAIT = Setting(
        10.0,
        "cap in seconds on one backoff or `Retry-After` wait",
        by_env={"testing": 0.2})
    PLUGIN_IDLE_TIMEOUT = Setting(
        600.0,
        "seconds an unused plugin instance (HTTP session) stays open",
        by_env={"testing": 60.0})
    PLUGIN_MAX_INSTANCES = Setting(
        256,
        "plugin instances kept open in all; past it the least recently used is closed (after `REQUEST_DEADLINE`, "
        "so calls on it end first)",
        check=at_least(1))
    PLUGIN_MAX_INSTANCES_PER_USER = Setting(
        8,
        "plugin instances kept open per user (users' own credentials, one per provider); past it the user's least"
        " recently used is closed",
        check=at_least(1))
    ALPACA_API_KEY_ID = Setting("", "Alpaca API key id (`stocks`)")
    ALPACA_API_SECRET_KEY = Setting("", "Alpaca API secret key (`stocks`)")
    ALPACA_FEED = Setting("iex", "Alpaca bars `feed` parameter (`iex` or `sip`)")
    ALPACA_ADJUSTMENT = Setting("raw", "Alpaca bars `adjustment` parameter (`raw`, `split`, `dividend`, `all`)")
    SIM_SEED = Setting(42, "seed of the simulated market")
    PROVIDER_BUDGETS: Setting[dict[str, str]] = Setting(
        {"binance": "5700/60/60", "kraken": "60/60", "coinbase": "600/60",
         "bybit": "600/60", "okx": "600/60", "alpaca": "200/60"},
        "JSON: provider id to `\"units/seconds\"` or `\"units/seconds/burst\"` (a unit is one call, or the exchange's"
        " request weight where it has one), merged over the default (below); `\"*\"` for unnamed providers; `\"off\"`"
        " lifts one")
    PROVIDER_BUDGET_MAX_WAIT = Setting(
        2.0,
        "longest a call waits for its budget slot before it fails as `provider_unavailable`")
    PROVIDER_BAN_DEFAULT = Setting(10.0, "pause (s) after an exchange's 418/429 that named no `Retry-After`")

    _rest_requests = Section("REST requests")
    OHLCV_DEFAULT_LIMIT = Setting(500, "`/ohlcv` `limit` when none is given (at most `OHLCV_MAX_LIMIT`)")
    OHLCV_MAX_LIMIT = Setting(
        5000,
        "largest `/ohlcv` `limit` (may be lowered, not raised past the API's 5000)",
        check=limit_at_most(5000))
    OHLCV_MAX_PROVIDER_CALLS = Setting(
        10,
        "upstream calls one `/ohlcv` request may make; the rest goes to a backfill job")
    EXPORT_MAX_BARS = Setting(
        10_000_000,
        "`/export`: most bars (buckets) one export may span; more is 400",
        check=positive)
    EXPORT_BATCH_ROWS = Setting(
        65_536,
        "`/export`: bars per batch (a Parquet row group, an Arrow record batch, a chunk of CSV)",
        check=positive)
    EXPORT_TIMEOUT = Setting(
        3600.0,
        "`/export`: longest one export may stream, slow clients included (seconds)",
        check=positive)
    EXPORT_MAX_CONCURRENT = Setting(
        4,
        "`/export`: most exports one instance streams at once (each holds a pool connection throughout, so keep "
        "it below `DB_POOL_MAX`); one more is 503 `dependency_unavailable` with `Retry-After`",
        check=positive)
    REQUEST_DEADLINE = Setting(
        10.0,
        "seconds within which every `/ohlcv` answer and WebSocket snapshot comes: from stored data with `X-Data-"
        "Incomplete: true` when the provider is slower (its fetch goes on in the background to fill storage), "
        "else 503 `provider_unavailable` with `Retry-After`; `/symbols` and `/ticker` (the last known ticker, "
        "stale, if any) within it too")
    UDF_SEARCH_SECONDS = Setting(
        1.5,
        "longest `/udf/search` over every exchange waits for their symbol lists; then it answers what is known "
        "(an exchange that has not answered counts with its last list, if any)",
        check=seconds)
    MAX_BODY_BYTES = Setting(65_536, "largest request body; larger answers 413", check=positive)
    REQUEST_BODY_TIMEOUT = Setting(
        10.0,
        "seconds a request body may take to arrive in full, however it trickles; then 408",
        check=seconds)

    _access = Section("Access")
    AUTH_ENABLED = Setting(
        False,
        "require an API key: `X-API-Key` (REST), that header or `?api_key=` (WebSocket handshake)")
    API_KEYS: Setting[str | list[str]] = Setting(
        "",
        "accepted keys as **sha256 hex digests**, JSON list or comma-separated")
    OPERATOR_KEYS: Setting[str | list[str]] = Setting(
        "",
        "operators' keys, as `API_KEYS` (accepted as keys too): `GET /api/v1/backfill` lists every client's jobs "
        "for them, each other client's own only")
    API_KEYS_FROM_DB = Setting(True, "also accept keys of the `api_keys` table (migration 020; `revoked_at` revokes)")
    API_KEY_CACHE_TTL = Setting(30.0, "seconds a table look-up (found or not) is reused per process")
    METRICS_TOKEN = Setting(
        "",
        "when set, `/metrics` needs `Authorization: Bearer <token>` (whether or not API keys are on)")
    CORS_ORIGINS = Setting(
        "",
        "comma-separated origins that browsers may call the REST API from: exact (`https://dash.example.com`), "
        "any port (`http://localhost:*`) or `*`; empty: no CORS",
        by_env={"development": "http://localhost:*,http://127.0.0.1:*"})
    WS_ALLOWED_ORIGINS = Setting(
        "",
        "comma-separated origins (port wildcards too) allowed to open `/api/v1/ws` (403 `forbidden_origin` "
        "otherwise); empty: any")
    RATE_LIMIT_ENABLED = Setting(True, "inbound limits per API key (auth on) or client IP")
    RATE_LIMITS: Setting[dict[str, str]] = Setting(
        {"default": "600/60", "ohlcv": "300/60", "export": "30/60",
         "backfill": "60/60", "ws": "300/300", "auth_failures": "30/60"},
        "JSON: route class (`default`, `ohlcv`, `export`, `backfill`, `ws`, `auth_failures`) to "
        "`\"requests/seconds\"` (also `10/s`, `100/minute`, `off`), merged over the default (a limit of N per S "
        "seconds admits a burst of N, then one every S/N seconds: `ws` lets 300 dashboards behind one address "
        "open at once, as Binance does)")
    TRUSTED_PROXIES: Setting[str | list[str]] = Setting(
        "",
        "addresses or CIDRs of your reverse proxies (comma-separated or a JSON list): `X-Forwarded-For` is "
        "believed only from them, and the client is its last address not in them; empty: the header is ignored",
        check=_trusted_proxies)
    TRUST_FORWARDED_FOR = Setting(
        False,
        "replaced by `TRUSTED_PROXIES`; `true` is refused at start",
        check=_trust_forwarded_for)
    READINESS_TIMEOUT = Setting(0.5, "seconds each `/health/ready` check may take")
    READINESS_CACHE_SECONDS = Setting(
        1.0,
        "seconds `/health/ready` reuses its dependency checks (database, Redis, breakers; probes arriving "
        "meanwhile share one run)",
        check=seconds_or_zero)

    _users_credentials_and_failure_handling = Section("Users' credentials and failure handling")
    CREDENTIALS_KEYS = Setting(
        "",
        "Fernet keys encrypting users' exchange credentials, newest first (comma-separated or a JSON list; "
        "`python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"`); empty: "
        "`/credentials` answers 503")
    CREDENTIALS_CACHE_TTL = Setting(
        5.0,
        "seconds an instance reuses a user's credentials look-up (a change made through another instance applies "
        "within it)")
    TICKER_STALE_TTL = Setting(
        86_400,
        "seconds the last good ticker of a symbol is kept in Redis to answer (stale) while its provider fails")
    BREAKER_FAILURE_THRESHOLD = Setting(
        5,
        "consecutive temporary failures of a provider (cluster-wide) that open its circuit breaker",
        check=at_least(1))
    BREAKER_OPEN_SECONDS = Setting(
        30.0,
        "how long an open breaker refuses calls before one probe is let through",
        check=seconds, by_env={"testing": 1.0})
    BREAKER_PROBE_SECONDS = Setting(
        15.0,
        "the longest a half-open probe may take before another caller may probe",
        check=seconds)
    BREAKER_SLOW_SECONDS = Setting(
        5.0,
        "a provider call cut off (by `REQUEST_DEADLINE`, or its client gone) after running this long counts as a "
        "failure: an exchange that slow is failing",
        check=seconds)
    WARMUP_ENABLED = Setting(
        True,
        "prefetch recently live channels and the most requested ranges at start (see "
        "[architecture.md](architecture.md#cache-warming))")
    WARMUP_MAX_SECONDS = Setting(20.0, "the warm-up's wall-time budget (seconds)")
    WARMUP_MAX_CALLS = Setting(50, "the warm-up's budget of upstream calls of the process since it began")
    WARMUP_TOP_RANGES = Setting(20, "how many of the most requested recent `/ohlcv` ranges are warmed")
    WARMUP_SNAPSHOT_BARS = Setting(100, "bars warmed per recently live channel (the latest, as a default snapshot)")
    WARMUP_LOOKBACK_SECONDS = Setting(3600.0, "how recent \"recently live\" and \"recently requested\" are")
    WARMUP_RECORD_SECONDS = Setting(
        15.0,
        "how often each instance records its live channels and counted ranges in Redis")

    _backfill = Section("Backfill")
    BACKFILL_RUNNER = Setting(True, "run the job runner in this instance (off: the API still queues jobs)")
    BACKFILL_MAX_JOBS = Setting(2, "jobs one instance runs at once")
    BACKFILL_CONCURRENCY = Setting(4, "concurrent upstream calls per provider of this instance's backfills")
    BACKFILL_POLL_INTERVAL = Setting(2.0, "seconds between looks for queued jobs")
    BACKFILL_LEASE_SECONDS = Setting(30.0, "lease of a running job; a dead instance's job resumes elsewhere after it")
    BACKFILL_RETRY_BASE = Setting(1.0, "first wait of a chunk's retries (seconds)")
    BACKFILL_RETRY_MAX_WAIT = Setting(60.0, "cap of a chunk's retry backoff (seconds)")
    BACKFILL_PATIENCE = Setting(
        3600.0,
        "how long a chunk (a job: its provider) keeps failing with temporary errors before the job fails")
    BACKFILL_YIELD_AFTER = Setting(
        30.0,
        "how long a job retries a failing provider in its runner slot before it yields the slot to other jobs and"
        " waits queued")
    BACKFILL_MAX_RANGE_DAYS = Setting(3660, "longest range of one job")
    BACKFILL_MAX_QUEUED_PER_CLIENT = Setting(
        10,
        "queued jobs one client (API key, else address) may have; one more is 429 `too_many_jobs`, and a request "
        "overlapping a queued job of the series widens that job instead",
        check=at_least(1))
    BACKFILL_AUTO_MAX_DAYS = Setting(
        7,
        "longest backfill a `GET /ohlcv` queues by itself (its latest days); larger ranges only by `POST "
        "/backfill`")
    BACKFILL_WRITE_CACHE = Setting(
        True,
        "also put backfilled 1m bars into the Redis 1m cache: those of the latest `BACKFILL_CACHE_DAYS`")
    BACKFILL_CACHE_DAYS = Setting(
        7.0,
        "how recent a backfilled bar must be to go to the 1m cache (older history is read from PostgreSQL)")

    _live_candles_websocket = Section("Live candles (WebSocket)")
    WS_MAX_SUBSCRIPTIONS = Setting(50, "subscriptions per connection", check=at_least(1))
    WS_MAX_CONNECTIONS_PER_CLIENT = Setting(
        500,
        "open WebSocket connections per client (API key from the `X-API-Key` header, else IP) per instance; one "
        "more is refused at the handshake with 429 `too_many_connections`",
        check=at_least(1))
    WS_AUTH_RECHECK_SECONDS = Setting(
        20.0,
        "with auth on, how often the keys of open WebSockets are re-checked; a revoked key's connections are "
        "closed with 1008")
    WS_MAX_CHANNELS = Setting(
        1000,
        "live channels (pollers or streams) per instance; a subscribe that would open one more gets a "
        "`too_many_subscriptions` error frame",
        check=at_least(1))
    WS_MAX_MESSAGE_BYTES = Setting(
        4096,
        "largest client message; larger ones get an `invalid_message` error frame",
        check=at_least(1))
    WS_SEND_QUEUE = Setting(
        256,
        "frames queued per connection; a client that far behind is closed with 1013",
        check=at_least(1))
    WS_MAX_PENDING_MESSAGES = Setting(
        128,
        "client messages waiting to be handled per connection; a client sending faster is closed with 1013")
    WS_SNAPSHOT_CONCURRENCY = Setting(
        16,
        "snapshots built at once per process (a burst of subscribes queues)",
        check=at_least(1))
    WS_HEARTBEAT_SECONDS = Setting(20.0, "server pings; a peer silent for 3x this is dropped", check=positive)
    WS_PER_MESSAGE_DEFLATE = Setting(
        False,
        "accept a client's permessage-deflate offer under Uvicorn (off: declined, about 35 KiB a connection "
        "against 156 accepted: `docs/performance.md`); Hypercorn always accepts it (see "
        "`blueprints/ws_server.py`)")
    WS_SEND_TIMEOUT_SECONDS = Setting(30.0, "a write stalled this long marks a dead peer (1013)", check=positive)
    WS_UNSUBSCRIBE_GRACE_SECONDS = Setting(
        10.0,
        "a channel's poller outlives its last local subscriber this long",
        check=non_negative)
    POLL_INTERVALS: Setting[dict[str, float]] = Setting(
        {"1m": 2.0, "3m": 2.0, "5m": 3.0, "15m": 3.0, "30m": 5.0},
        "JSON: timeframe to seconds between polls")
    POLL_INTERVAL_DEFAULT = Setting(5.0, "poll interval of other timeframes", check=positive)
    POLL_PROVIDER_MIN_INTERVALS: Setting[dict[str, float]] = Setting(
        {},
        "JSON: provider id to the least seconds between polls")
    POLL_CLOSE_DELAY_SECONDS = Setting(0.5, "wait after a bucket ends before fetching its final bar")
    POLL_MAX_BACKOFF_SECONDS = Setting(30.0, "cap of a failing poller's backoff")
    POLL_MAX_CATCHUP_BARS = Setting(5000, "most bars a poller catches up after an outage", check=at_least(1))
    POLL_REVISION_SECONDS = Setting(
        120.0,
        "closed buckets that ended this recently are fetched again by each poll; changed values are published as "
        "revisions",
        check=non_negative)
    LEASE_TTL_SECONDS = Setting(
        6.0,
        "lease of a channel's poller in Redis (one poller per channel cluster-wide)",
        check=positive)
    STREAM_FEEDS = Setting(
        True,
        "live channels of exchanges with CCXT Pro kline streams are fed by the stream (docs/websocket.md)")
    STREAM_SILENCE_SECONDS = Setting(
        10.0,
        "a stream silent this long counts as down (the channel falls back to polling)",
        check=seconds)
    STREAM_VERIFY_SECONDS = Setting(
        90.0,
        "closed stream bars are checked against REST (one call for all unchecked) once the oldest closed this "
        "long ago",
        check=seconds)
    STREAM_RETRY_SECONDS = Setting(
        5.0,
        "after a stream failure the channel polls this long before trying the stream again (doubling per failure)",
        check=seconds)
    STREAM_RETRY_MAX_SECONDS = Setting(300.0, "the most that wait grows to", check=seconds)

    def __init__(self, env: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        """The defaults of ``env`` (this class's ``env`` by default) with ``environ`` applied
        (``os.environ`` by default); ``APP_ENV`` picks the class, it is not an override."""
        self.APP_ENV = env or self.env
        environ = os.environ if environ is None else environ
        for setting in SETTINGS.values():
            if setting.name == "APP_ENV":
                continue
            raw = environ.get(setting.name)
            setattr(self, setting.name, setting.default_for(self.APP_ENV) if raw is None else setting.parse(raw))

    #: The ``APP_ENV`` whose defaults this class has.
    env = "development"

    def validate(self) -> None:
        """Fail fast with the variable's name and what is wrong: each setting's check, then the
        checks that involve two settings."""
        for setting in SETTINGS.values():
            setting.validate(getattr(self, setting.name))
        if not self.DB_POOL_MIN <= self.DB_POOL_MAX:
            raise ConfigError("DB_POOL_MIN and DB_POOL_MAX must satisfy 1 <= min <= max")
        if not 1 <= self.OHLCV_DEFAULT_LIMIT <= self.OHLCV_MAX_LIMIT:
            raise ConfigError("OHLCV_DEFAULT_LIMIT must be between 1 and OHLCV_MAX_LIMIT")

    def as_dict(self) -> dict[str, Any]:
        """Every setting (and any other upper-case attribute set on this object) by name."""
        return {name: value for name, value in vars(self).items() if name.isupper()}


class DevelopmentConfig(BaseConfig):
    env = "development"


class ProductionConfig(BaseConfig):
    env = "production"


class TestingConfig(BaseConfig):
    env = "testing"


#: Every declared setting by name, in the table's order.
SETTINGS: dict[str, Setting[Any]] = {
    value.name: value for value in vars(BaseConfig).values() if isinstance(value, Setting)}
CONFIGS: dict[str, type[BaseConfig]] = {c.env: c for c in (DevelopmentConfig, ProductionConfig, TestingConfig)}


def declared(name: str) -> Setting[Any]:
    """The declaration of setting ``name`` (its default, check and doc)."""
    return SETTINGS[name]


def from_environ(name: str) -> Any:
    """Setting ``name`` from the environment, else its default for ``APP_ENV``: for entry points
    that read one setting before any app exists (``serve.py``'s server and loop)."""
    setting = SETTINGS[name]
    raw = os.environ.get(name)
    value = setting.default_for(os.environ.get("APP_ENV", "development")) if raw is None else setting.parse(raw)
    setting.validate(value)
    return value


def load_config(env: str | None = None) -> BaseConfig:
    """The config for ``env`` (default ``APP_ENV``), with the environment applied."""
    name = env or os.environ.get("APP_ENV", "development")
    if name not in CONFIGS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(CONFIGS)}, got {name!r}")
    return CONFIGS[name]()


# --- The settings table of docs/configuration.md --------------------------------------------------
TABLE_START = "<!-- settings table: written by `make docs` from config.py; edit the declarations there -->"
TABLE_END = "<!-- end of settings table -->"


def _shown(value: Any) -> str:
    if value == "":
        return "empty"
    text = json.dumps(value) if isinstance(value, bool | dict) else str(value)
    return f"`{text}`"


def settings_table() -> str:
    """The settings as docs/configuration.md's Markdown table: a row per setting, a bold row per
    section, and the other ``APP_ENV``s' defaults in brackets."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for value in vars(BaseConfig).values():
        if isinstance(value, Section):
            rows.append(f"| **{value.title}** | | |")
        elif isinstance(value, Setting):
            default = _shown(value.default)
            if value.by_env:
                default += " (" + ", ".join(f"{_shown(v)} in {env}" for env, v in value.by_env.items()) + ")"
            rows.append(f"| `{value.name}` | {default} | {value.doc} |")
    return "\n".join([TABLE_START, *rows, TABLE_END])


def write_settings_table(path: Path) -> bool:
    """Put ``settings_table()`` between the markers in ``path``; True when the file changed."""
    text = path.read_text()
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    new = head + settings_table() + tail
    path.write_text(new)
    return new != text


if __name__ == "__main__":  # python config.py docs/configuration.md: rewrite its settings table
    changed = write_settings_table(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: {'settings table rewritten' if changed else 'settings table up to date'}")
