"""The hub's settings: one frozen object built and validated from the config at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config import ConfigError


@dataclass(frozen=True)
class PollSettings:
    """Poll timing of the channel pollers (``POLL_*``)."""

    intervals: Mapping[str, float] = field(default_factory=dict)
    default_interval: float = 5.0
    provider_min: Mapping[str, float] = field(default_factory=dict)
    close_delay: float = 0.5
    max_backoff: float = 30.0
    max_catchup_bars: int = 5000
    catchup_chunk: int = 64
    #: Closed buckets that ended this recently are fetched again on each poll: a changed value is
    #: published as a revision (exchanges correct minute bars up to about a minute later).
    revision_seconds: float = 0.0

    def interval_for(self, timeframe: str, provider: str, capability_min: float) -> float:
        """The timeframe's interval, never below the provider's minimum (its rate limit)."""
        floor = self.provider_min.get(provider, capability_min)
        return max(float(self.intervals.get(timeframe, self.default_interval)), float(floor))


@dataclass(frozen=True)
class HubSettings:
    """Limits of connections and channels (``WS_*``, ``LEASE_TTL_SECONDS``) and the poll timing."""

    max_subscriptions: int = 50
    max_connections_per_client: int = 500
    max_channels: int = 1000
    send_queue: int = 256
    send_timeout: float = 30.0
    grace: float = 10.0
    snapshot_concurrency: int = 16
    lease_ttl: float = 6.0
    retry_after: float = 2.0
    poll: PollSettings = field(default_factory=PollSettings)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HubSettings:
        """Read and check the values once; raises ``ConfigError`` naming the bad variable."""
        for name in ("WS_MAX_SUBSCRIPTIONS", "WS_MAX_CONNECTIONS_PER_CLIENT", "WS_MAX_CHANNELS",
                     "WS_SEND_QUEUE", "WS_MAX_MESSAGE_BYTES",
                     "WS_SNAPSHOT_CONCURRENCY", "POLL_MAX_CATCHUP_BARS"):
            if int(config[name]) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("POLL_INTERVAL_DEFAULT", "LEASE_TTL_SECONDS", "WS_HEARTBEAT_SECONDS",
                     "WS_SEND_TIMEOUT_SECONDS"):
            if float(config[name]) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("POLL_REVISION_SECONDS", "WS_UNSUBSCRIBE_GRACE_SECONDS"):
            if float(config[name]) < 0:
                raise ConfigError(f"{name} must not be negative")
        queue = int(config["WS_SEND_QUEUE"])
        poll = PollSettings(
            intervals={k: float(v) for k, v in dict(config["POLL_INTERVALS"] or {}).items()},
            default_interval=float(config["POLL_INTERVAL_DEFAULT"]),
            provider_min={k: float(v) for k, v in
                          dict(config["POLL_PROVIDER_MIN_INTERVALS"] or {}).items()},
            close_delay=float(config["POLL_CLOSE_DELAY_SECONDS"]),
            max_backoff=float(config["POLL_MAX_BACKOFF_SECONDS"]),
            max_catchup_bars=int(config["POLL_MAX_CATCHUP_BARS"]),
            catchup_chunk=max(1, queue // 4),
            revision_seconds=float(config["POLL_REVISION_SECONDS"]),
        )
        return cls(
            max_subscriptions=int(config["WS_MAX_SUBSCRIPTIONS"]),
            max_connections_per_client=int(config["WS_MAX_CONNECTIONS_PER_CLIENT"]),
            max_channels=int(config["WS_MAX_CHANNELS"]),
            send_queue=queue,
            send_timeout=float(config["WS_SEND_TIMEOUT_SECONDS"]),
            grace=float(config["WS_UNSUBSCRIBE_GRACE_SECONDS"]),
            snapshot_concurrency=int(config["WS_SNAPSHOT_CONCURRENCY"]),
            lease_ttl=float(config["LEASE_TTL_SECONDS"]),
            retry_after=float(config["DEPENDENCY_RETRY_AFTER"]),
            poll=poll,
        )
