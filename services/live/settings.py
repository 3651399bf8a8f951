"""The hub's settings: one frozen object built and checked from the config at start-up (each
field's default and check are its key's declaration in config.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from config import declared
from services.settings import build, setting


def _seconds_by_name(raw: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(raw or {}).items()}


@dataclass(frozen=True)
class PollSettings:
    """Poll timing of the channel pollers (``POLL_*``)."""

    intervals: Mapping[str, float] = setting("POLL_INTERVALS", _seconds_by_name)
    default_interval: float = setting("POLL_INTERVAL_DEFAULT")
    provider_min: Mapping[str, float] = setting("POLL_PROVIDER_MIN_INTERVALS", _seconds_by_name)
    close_delay: float = setting("POLL_CLOSE_DELAY_SECONDS")
    max_backoff: float = setting("POLL_MAX_BACKOFF_SECONDS")
    max_catchup_bars: int = setting("POLL_MAX_CATCHUP_BARS")
    #: Bars fetched per catch-up call: a quarter of ``WS_SEND_QUEUE``, so a catch-up never fills a
    #: subscriber's queue (``HubSettings.from_config`` derives it).
    catchup_chunk: int = field(default=max(1, declared("WS_SEND_QUEUE").default // 4))
    #: Closed buckets that ended this recently are fetched again on each poll: a changed value is
    #: published as a revision (exchanges correct minute bars up to about a minute later).
    revision_seconds: float = setting("POLL_REVISION_SECONDS")

    def interval_for(self, timeframe: str, provider: str, capability_min: float) -> float:
        """The timeframe's interval, never below the provider's minimum (its rate limit)."""
        floor = self.provider_min.get(provider, capability_min)
        return max(float(self.intervals.get(timeframe, self.default_interval)), float(floor))


@dataclass(frozen=True)
class HubSettings:
    """Limits of connections and channels (``WS_*``, ``LEASE_TTL_SECONDS``) and the poll timing."""

    max_subscriptions: int = setting("WS_MAX_SUBSCRIPTIONS")
    max_connections_per_client: int = setting("WS_MAX_CONNECTIONS_PER_CLIENT")
    max_channels: int = setting("WS_MAX_CHANNELS")
    send_queue: int = setting("WS_SEND_QUEUE")
    send_timeout: float = setting("WS_SEND_TIMEOUT_SECONDS")
    grace: float = setting("WS_UNSUBSCRIBE_GRACE_SECONDS")
    snapshot_concurrency: int = setting("WS_SNAPSHOT_CONCURRENCY")
    lease_ttl: float = setting("LEASE_TTL_SECONDS")
    retry_after: float = setting("DEPENDENCY_RETRY_AFTER")
    poll: PollSettings = field(default_factory=PollSettings)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HubSettings:
        """Read and check the values once; raises ``ConfigError`` naming the bad variable."""
        hub = build(cls, config)
        poll = replace(build(PollSettings, config), catchup_chunk=max(1, hub.send_queue // 4))
        return replace(hub, poll=poll)
