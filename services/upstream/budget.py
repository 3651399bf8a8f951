"""Outbound request budgets per provider, shared by every instance through Redis.

Each provider has a budget of ``units/seconds[/burst]`` (``DEFAULT_BUDGETS`` merged with the
``PROVIDER_BUDGETS`` config; ``"*"`` sets one for providers not named; unnamed providers such as
``sim`` are unlimited). A unit is one call, or the exchange's own request weight where the plugin
declares one (``MarketPlugin.call_weight``: Binance klines weigh 2 of its 6000 per minute): a call
takes its weight in units. ``burst`` (default: ``units``) is how far ahead of the steady rate calls
may run; an exchange that counts weight per clock-aligned window (Binance) needs a small one, or a
burst at the end of one window and the steady rate into the next pass its limit.
A call reserves the next free slot of a GCRA schedule in Redis with one
atomic script and sleeps until it; when the slot is further away than ``PROVIDER_BUDGET_MAX_WAIT``
the call fails at once with ``RateLimitedPluginError`` (503 ``provider_unavailable``) instead of
stalling the request. N instances together therefore stay under the exchange's limit.

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

from core.errors import DataSourceError, RateLimitedPluginError
from core.metrics import PROVIDER_BUDGET_EVENTS
from services.settings import build, setting

log = logging.getLogger(__name__)

#: Conservative shares of each exchange's published public limit (calls per seconds).
DEFAULT_BUDGETS = {
    "binance": "5700/60/60",  # request weight: 0.95 x 6000 per minute, klines weigh 2
    "kraken": "60/60", "coinbase": "600/60", "bybit": "600/60",
    "okx": "600/60", "alpaca": "200/60",
}

#: The longest pause an exchange's Retry-After can impose (Binance's IP bans last up to 3 days).
MAX_PAUSE_SECONDS = 3 * 24 * 3600.0

#: KEYS[1]: pause key, KEYS[2]: schedule (TAT, ms). ARGV: emission ms (0: no budget), burst,
#: longest wait ms, weight. Returns {status, ms}: 1 go after ms, 0 over budget (retry in ms), -1 paused.
BUDGET_LUA = """
local pause = redis.call('PTTL', KEYS[1])
if pause > 0 then return {-1, pause} end
local emission = tonumber(ARGV[1])
if emission <= 0 then return {1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = emission * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[2]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + emission * tonumber(ARGV[4])
local wait = new_tat - window - now
if wait > tonumber(ARGV[3]) then return {0, math.ceil(wait)} end
redis.call('SET', KEYS[2], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
if wait < 0 then wait = 0 end
return {1, math.ceil(wait)}
"""


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
    """``PROVIDER_BUDGETS`` (over ``DEFAULT_BUDGETS``), ``PROVIDER_BUDGET_MAX_WAIT``,
    ``PROVIDER_BAN_DEFAULT``."""

    budgets: Mapping[str, str] | None = setting("PROVIDER_BUDGETS", None, dict)
    max_wait: float = setting("PROVIDER_BUDGET_MAX_WAIT", 2.0, float)
    ban_default: float = setting("PROVIDER_BAN_DEFAULT", 10.0, float)


class ProviderBudget:
    """Cluster-wide outbound budget and ban pauses. ``attach(redis)`` shares it through Redis."""

    def __init__(self, config: Mapping[str, Any], redis: Any = None) -> None:
        settings = build(BudgetSettings, config)
        merged = {**DEFAULT_BUDGETS, **(settings.budgets or {})}
        self.budgets = {p: parse_budget(text) for p, text in merged.items()}
        self.bursts = {p: parse_burst(text) for p, text in merged.items()}
        self.max_wait = settings.max_wait
        self.ban_default = settings.ban_default
        self.redis = redis
        self._local_tat: dict[str, float] = {}
        self._local_pause: dict[str, float] = {}
        self._scripts: dict[int, Any] = {}

    def attach(self, redis: Any) -> None:
        """Share budgets and pauses through ``redis`` (a ``core.ports.RedisClient``)."""
        self.redis = redis

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
        await self.taken(provider, *await self._take(provider, self.take_args(provider, weight)))

    def take_args(self, provider: str, weight: int = 1) -> list[Any]:
        """``BUDGET_LUA``'s ARGV for a call of ``weight`` units: emission ms, burst, longest
        wait ms, weight."""
        budget = self.budget_for(provider)
        emission, burst = (budget[1] * 1000 / budget[0], budget[0]) if budget else (0.0, 0)
        burst = max(self.burst_for(provider) or burst, weight) if budget else 0
        return [emission, burst, self.max_wait * 1000, max(1, weight)]

    async def taken(self, provider: str, status: int, ms: int) -> None:
        """Act on ``BUDGET_LUA``'s answer: raise ``RateLimitedPluginError`` (paused, over
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

    def keys(self, provider: str) -> list[str]:
        """``BUDGET_LUA``'s KEYS: the pause and the schedule (needs ``redis``)."""
        assert self.redis is not None
        return [self.redis.key("budget", "pause", provider), self.redis.key("budget", "tat", provider)]

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
        self._local_pause[provider] = time.monotonic() + seconds
        if self.redis is not None:
            key = self.redis.key("budget", "pause", provider)
            try:
                await self.redis.run(lambda r: r.set(key, "1", px=ms))
            except DataSourceError as exc:
                log.warning("provider pause kept locally only: %s", exc.details)

    async def _take(self, provider: str, args: list[Any]) -> tuple[int, int]:
        """``BUDGET_LUA`` with ``args`` (``take_args``), or the same schedule in memory."""
        if self.redis is not None:
            keys = self.keys(provider)
            try:
                status, ms = await self.redis.run(lambda r: self._script(r)(keys=keys, args=args))
                return int(status), int(ms)
            except DataSourceError as exc:
                log.debug("provider budget decided locally: %s", exc.details)
                PROVIDER_BUDGET_EVENTS.labels(provider, "local").inc()
        emission, burst, _, weight = args
        return self._take_local(provider, emission, burst, weight)

    def _take_local(self, provider: str, emission: float, burst: int, weight: int = 1) -> tuple[int, int]:
        now = time.monotonic() * 1000
        paused_until = self._local_pause.get(provider, 0.0) * 1000
        if paused_until > now:
            return -1, int(paused_until - now) + 1
        if emission <= 0:
            return 1, 0
        new_tat = max(self._local_tat.get(provider, now), now) + emission * weight
        wait = new_tat - emission * burst - now
        if wait > self.max_wait * 1000:
            return 0, int(wait) + 1
        self._local_tat[provider] = new_tat
        return 1, max(0, int(wait))

    def _script(self, client: Any) -> Any:
        script = self._scripts.get(id(client))
        if script is None:
            script = self._scripts[id(client)] = client.register_script(BUDGET_LUA)
        return script
