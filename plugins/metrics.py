"""Prometheus metrics of the plugins, registered once in the default registry at import."""

from __future__ import annotations

from prometheus_client import Counter

PROVIDER_RETRIES = Counter(
    "provider_retries_total",
    "Upstream calls retried after a temporary error, by configured provider id",
    ["provider"],
)
