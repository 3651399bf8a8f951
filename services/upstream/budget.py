"""Outbound request budgets per provider, shared by every instance through Redis.

Each provider has a budget of ``units/seconds[/burst]`` (``PROVIDER_BUDGETS``, whose value is
merged over its declared default in config.py; ``"*"`` sets one for providers not named; unnamed providers such as
``sim`` are unlimited). A unit is one call, or the exchange's own request weight where the plugin
declares one (``MarketPlugin.call_weight``: Binance klines weigh 2 of its 6000 per minute): a call
takes its weight in units. ``burst`` (default: ``units``) is how far ahead of the steady rate calls
may run; an exchange that counts weight per clock-aligned window (Binance) needs a small one, or a
burst at the end of one window and the steady rate into the next pass its limit.
A call reserves the next free slot of a GCRA schedule in Redis (the GCRA of the limits' store,
``services.upstream.store``, as the rate limiter's) with one atomic script and sleeps until it;
when the slot is further away than ``PROVIDER_BUDGET_MAX_WAIT`` the call fails at once with
``RateLimitedPluginError`` (503 ``provider_unavailable``) instead of stalling the request. N
instances together therefore stay under the exchange's limit.

When an exchange rate-limits or bans us (418/429: ``RateLimitedPluginError``), the provider is
paused cluster-wide for its ``retry_after`` (or ``PROVIDER_BAN_DEFAULT`` seconds): every
instance's calls to it fail fast until the pause ends, instead of deepening the ban.

When Redis is down the same schedule and pauses are kept in process memory (each instance then
spends the whole budget on its own until Redis is back).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from config import declared
from core.errors import DataSourceError, RateLimitedPluginError
from core.metrics import PROVIDER_BUDGET_EVENTS
from services.settings import build, setting
from services.upstream.store import Key, RedisRunner, Store

log = logging.getLogger(__name__)


#: The longest pause an exchange's Retry-After can impose (Binance's IP bans last up to 3 days).
MAX_PAUSE_SECONDS = 3 * 24 * 3600.0

def parse_budget(text: str) -> tuple[int, float] | None:
    """``"calls/seconds"`` (or ``"calls/seconds/burst"``) as (calls, seconds); "off" or "" as None."""
    raw = str(text).strip().lower()
    if raw in ("", "off", "none"):
        return None
    calls, _, seconds = raw.partition("/")
    seconds, _, burst = seconds.partition("/")
    if burst and parse_burst(text) is None:
        raise ValueError(f"PROVIDER_BUDGETS: {text!r} needs a positive integer burst")
    try:
        parsed = int(calls), float(seconds)
    except ValueError as exc:
        raise ValueError(f"PROVIDER_BUDGETS: {text!r} is not 'calls/seconds'") from exc
    if parsed[0] < 1 or not 0 < parsed[1] < math.inf:  # also refuses nan
        raise ValueError(f"PROVIDER_BUDGETS: {text!r} needs positive calls and seconds")
    return parsed


def parse_burst(text: str) -> int | None:
    """The burst of ``"units/seconds/burst"``: None when not given (or not a positive integer)."""
    parts = str(text).strip().split("/")
    if len(parts) != 3 or not parts[2].strip().isdigit() or int(parts[2]) < 1:
        return None
    return int(parts[2])


@dataclass(frozen=True)
class BudgetSettings:
    """``PROVIDER_BUDGETS`` (merged over its declared default), ``PROVIDER_BUDGET_MAX_WAIT``,
    ``PROVIDER_BAN_DEFAULT``."""

    budgets: Mapping[str, str] | None = setting("PROVIDER_BUDGETS")
    max_wait: float = setting("PROVIDER_BUDGET_MAX_WAIT")
    ban_default: float = setting("PROVIDER_BAN_DEFAULT")


class ProviderBudget:
    """Cluster-wide outbound budget and ban pauses, shared through ``redis`` (a
    ``core.ports.RedisClient``; None: this instance only)."""

    def __init__(self, config: Mapping[str, Any], redis: Any = None) -> None:
        settings = build(BudgetSettings, config)
        merged = {**declared("PROVIDER_BUDGETS").default, **(settings.budgets or {})}
        self.budgets = {p: parse_budget(text) for p, text in merged.items()}
        self.bursts = {p: parse_burst(text) for p, text in merged.items()}
        self.max_wait = settings.max_wait
        self.ban_default = settings.ban_default
        #: The schedules and pauses: in Redis, in memory while it fails.
        self.store = Store(redis)

    @property
    def redis(self) -> RedisRunner | None:
        return self.store.redis

    def budget_for(self, provider: str) -> tuple[int, float] | None:
        return self.budgets[provider] if provider in self.budgets else self.budgets.get("*")

    def burst_for(self, provider: str) -> int | None:
        return self.bursts[provider] if provider in self.bursts else self.bursts.get("*")

    @asynccontextmanager
    async def guard(self, provider: str, weight: int = 1) -> AsyncIterator[None]:
        """Wait for ``weight`` units of budget, run the call; a ``RateLimitedPluginError`` from it
        pauses the provider."""
        await self.acquire(provider, weight)
        async with self.watch(provider):
            yield

    @asynccontextmanager
    async def watch(self, provider: str) -> AsyncIterator[None]:
        """Run a call that has its budget; a ``RateLimitedPluginError`` from it pauses the
        provider."""
        try:
            yield
        except RateLimitedPluginError as exc:
            await self.pause(provider, exc.retry_after)
            raise

    async def acquire(self, provider: str, weight: int = 1) -> None:
        """Take one call of ``weight`` units from the budget (sleeping up to ``max_wait``), or raise
        ``RateLimitedPluginError`` while paused or over budget."""
        answer = await self.store.budget(*self.keys(provider), *self.take_args(provider, weight),
                                         on_local=lambda exc: self._local(provider, exc))
        await self.taken(provider, *answer)

    def take_args(self, provider: str, weight: int = 1) -> tuple[float, int, float, int]:
        """The store's ``budget`` arguments for a call of ``weight`` units: emission ms, burst,
        longest wait ms, weight."""
        budget = self.budget_for(provider)
        emission, burst = (budget[1] * 1000 / budget[0], budget[0]) if budget else (0.0, 0)
        burst = max(self.burst_for(provider) or burst, weight) if budget else 0
        return emission, burst, self.max_wait * 1000, max(1, weight)

    async def taken(self, provider: str, status: int, ms: int) -> None:
        """Act on the store's ``budget`` answer: raise ``RateLimitedPluginError`` (paused, over
        budget) or sleep until the call's slot."""
        if status < 0:
            PROVIDER_BUDGET_EVENTS.labels(provider, "paused").inc()
            raise RateLimitedPluginError(
                f"{provider} is paused after an exchange rate limit", retry_after=ms / 1000
            )
        if status == 0:
            PROVIDER_BUDGET_EVENTS.labels(provider, "exhausted").inc()
            raise RateLimitedPluginError(f"request budget for {provider} exhausted", retry_after=ms / 1000)
        if ms > 0:
            PROVIDER_BUDGET_EVENTS.labels(provider, "waited").inc()
            await asyncio.sleep(ms / 1000)

    @staticmethod
    def keys(provider: str) -> tuple[Key, Key]:
        """The store's keys of ``provider``: its pause and its schedule."""
        return ("budget", "pause", provider), ("budget", "tat", provider)

    async def read_back(self, provider: str, used: int, window: float = 60.0) -> None:
        """The exchange said we used ``used`` units in its current clock-aligned ``window``: past
        what our budget alone spends in one window (its steady share plus the burst), someone else
        spends from the same limit, so pause ``provider`` until the window ends."""
        budget = self.budget_for(provider)
        if budget is None:
            return
        ours = budget[0] * window / budget[1] + (self.burst_for(provider) or budget[0])
        if used < ours:
            return
        PROVIDER_BUDGET_EVENTS.labels(provider, "saturated").inc()
        log.info("%s says %d of its weight is used this window (ours: %d): pausing", provider, used,
                 ours)
        await self.pause(provider, window - time.time() % window)

    async def pause(self, provider: str, retry_after: float | None) -> None:
        """Pause every instance's calls to ``provider`` for ``retry_after`` seconds (or the default)."""
        seconds = retry_after if retry_after and retry_after > 0 else self.ban_default
        # An absurd Retry-After (inf, 1e300) must not overflow (a 500) nor pause us for good.
        seconds = min(seconds, MAX_PAUSE_SECONDS)
        ms = max(1, int(seconds * 1000))
        PROVIDER_BUDGET_EVENTS.labels(provider, "banned").inc()
        log.warning("%s rate-limited us: pausing calls to it for %.1f s", provider, seconds)
        await self.store.pause(self.keys(provider)[0], ms, on_local=self._pause_local)

    @staticmethod
    def _pause_local(exc: DataSourceError) -> None:
        log.warning("provider pause kept locally only: %s", exc.details)

    @staticmethod
    def _local(provider: str, exc: DataSourceError) -> None:
        log.debug("provider budget decided locally: %s", exc.details)
        PROVIDER_BUDGET_EVENTS.labels(provider, "local").inc()
