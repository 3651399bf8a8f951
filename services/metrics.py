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
DEPENDENCY_UP = Gauge("dependency_up", "1 when the dependency answered its last check", ["name"])
PLUGIN_INSTANCES = Gauge("plugin_instances", "Open plugin instances", ["plugin"])
DB_QUERY_LATENCY = Histogram(
    "db_query_duration_seconds", "Database query latency by query name", ["query"]
)


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
