"""A circuit breaker per provider, shared by every instance through Redis.

States (as pybreaker and resilience4j name them):

- ``closed``: calls go through; ``BREAKER_FAILURE_THRESHOLD`` consecutive failures (cluster-wide:
  a success resets the count) open it. A call that began with no failure counted does not record
  its success (nothing to reset: one Redis script a call instead of two); a failure counted while
  it ran is reset by the next success of a call that began after it.
- ``open``: calls are refused at once with ``ProviderCircuitOpen`` (503 ``provider_unavailable``
  with ``Retry-After``) for ``BREAKER_OPEN_SECONDS``; callers answer from stored data instead of
  queueing on a dead exchange.
- ``half_open``: the open time is over; one call in the whole cluster is let through as a probe
  (for at most ``BREAKER_PROBE_SECONDS``). Its success closes the breaker, its failure opens it
  again; meanwhile other calls are refused.

A failure is a temporary upstream error (``AppError.temporary``: unreachable, timeout, 5xx,
malformed body) other than a rate limit: 418/429 already pause the provider cluster-wide
(``ProviderBudget``), and counting them here too would cut a provider that is merely busy. An
error the exchange answered on purpose (unknown symbol, a user's refused key) proves it is up and
counts as a success. A call cancelled after ``BREAKER_SLOW_SECONDS`` (a request deadline cut it
off: the exchange is too slow to use) is a failure; one cancelled sooner counts as neither (a
probe gives its turn back).

State lives in one Redis hash per provider (``{prefix}:breaker:{provider}``), changed by atomic
scripts on Redis' own clock. When Redis is down the same state machine runs in process memory
(each instance then decides alone until Redis is back).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from core.errors import AppError, DataSourceError, NetworkPluginError, RateLimitedPluginError
from core.metrics import BREAKER_REJECTIONS, BREAKER_STATE, BREAKER_TRANSITIONS
from services.settings import build, setting
from services.upstream.circuit import Circuit

log = logging.getLogger(__name__)
T = TypeVar("T")
STATES = ("closed", "half_open", "open")

# The atomic scripts (Redis runs the same state machine as ``Circuit``): one Redis hash per
# provider, fields ``state``, ``failures``, ``until`` and ``probe_until`` (ms on Redis' own clock).

#: KEYS[1]: the provider's hash. ARGV[1]: probe ms. Returns {code, n}: 0 allowed (n: failures
#: counted), 1 allowed as the probe, 2 refused (retry in n ms).
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'state', 'until', 'probe_until', 'failures')
local state = st[1] or 'closed'
if state == 'closed' then return {0, tonumber(st[4]) or 0} end
local open_until = tonumber(st[2]) or 0
if state == 'open' and now < open_until then return {2, open_until - now} end
local probe_until = tonumber(st[3]) or 0
if now < probe_until then return {2, probe_until - now} end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[1]))
return {1, 0}
"""

#: KEYS[1]: the provider's hash. ARGV: outcome (ok, fail, neutral), probe (1/0), threshold,
#: open ms. Returns {state after, 1 when it changed}.
RECORD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'state', 'failures')
local state = st[1] or 'closed'
local outcome = ARGV[1]
if outcome == 'neutral' then
  if ARGV[2] == '1' and state == 'half_open' then redis.call('HSET', KEYS[1], 'probe_until', 0) end
  return {state, 0}
end
if outcome == 'ok' then
  if state ~= 'closed' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'until', 0, 'probe_until', 0)
    return {'closed', 1}
  end
  if (tonumber(st[2]) or 0) > 0 then redis.call('HSET', KEYS[1], 'failures', 0) end
  return {'closed', 0}
end
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[4]), 'probe_until', 0)
  return {'open', 1}
end
if state == 'open' then return {'open', 0} end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[4]), 'probe_until', 0)
  return {'open', 1}
end
return {'closed', 0}
"""

#: KEYS: one hash per provider. Returns each one's state; an open breaker whose time is over
#: reads as half_open (its next call is the probe).
READ_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local st = redis.call('HMGET', key, 'state', 'until')
  local state = st[1] or 'closed'
  if state == 'open' and now >= (tonumber(st[2]) or 0) then state = 'half_open' end
  out[i] = state
end
return out
"""

@dataclass(frozen=True)
class Admission:
    """A call let through: as the half-open ``probe``, or ``quiet``: the breaker was closed with
    no failure counted when it began, so its success has nothing to reset and is not recorded."""

    probe: bool = False
    quiet: bool = False


_QUIET, _ALLOWED, _PROBE = Admission(quiet=True), Admission(), Admission(probe=True)


class ProviderCircuitOpen(NetworkPluginError):
    """The provider's circuit breaker is open: no call was made. Answer from stored data, else
    503 ``provider_unavailable`` with ``retry_after``; do not retry before it."""


class RedisRunner(Protocol):
    """What the breaker needs from the app's Redis owner (``RedisClient``)."""

    def key(self, *parts: object) -> str: ...

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T: ...


@dataclass(frozen=True)
class BreakerSettings:
    """Thresholds, from ``BREAKER_*`` in the config (``from_config``)."""

    failure_threshold: int = setting("BREAKER_FAILURE_THRESHOLD", 5, int)
    open_seconds: float = setting("BREAKER_OPEN_SECONDS", 30.0, float)
    probe_seconds: float = setting("BREAKER_PROBE_SECONDS", 15.0, float)
    slow_seconds: float = setting("BREAKER_SLOW_SECONDS", 5.0, float)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BreakerSettings:
        """Built and validated once; raises ``ValueError`` naming the wrong setting."""
        settings = build(cls, config)
        if settings.failure_threshold < 1:
            raise ValueError("BREAKER_FAILURE_THRESHOLD must be at least 1")
        for name, value in (("BREAKER_OPEN_SECONDS", settings.open_seconds),
                            ("BREAKER_PROBE_SECONDS", settings.probe_seconds),
                            ("BREAKER_SLOW_SECONDS", settings.slow_seconds)):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds")
        return settings


def outcome_of(exc: BaseException | None) -> str:
    """``ok``, ``fail`` or ``neutral`` for a call that ended with ``exc`` (None: returned)."""
    if exc is None:
        return "ok"
    if isinstance(exc, RateLimitedPluginError | ProviderCircuitOpen):
        return "neutral"
    if isinstance(exc, AppError):
        return "fail" if exc.temporary else "ok"
    return "neutral"  # cancelled, or a bug of ours: says nothing about the exchange


class CircuitBreaker:
    """Per-provider breakers. ``attach(redis)`` shares them across instances."""

    def __init__(self, settings: BreakerSettings, redis: RedisRunner | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self._local: dict[str, Circuit] = {}
        self._scripts: dict[tuple[int, str], Any] = {}

    def attach(self, redis: RedisRunner) -> None:
        """Share state through ``redis`` (an ``app_extensions.redis_client.RedisClient``)."""
        self.redis = redis

    @asynccontextmanager
    async def guard(self, provider: str) -> AsyncIterator[None]:
        """Refuse at once while open (``ProviderCircuitOpen``); else run the call and record
        how it ended."""
        async with self.watch(provider, await self.admit(provider)):
            yield

    @asynccontextmanager
    async def watch(self, provider: str, admission: Admission) -> AsyncIterator[None]:
        """Run an admitted call and record how it ended (a quiet admission's success: nothing)."""
        started = time.monotonic()
        try:
            yield
        except asyncio.CancelledError:
            # Cut off by a request deadline (or a client gone) after this long: too slow to use.
            slow = time.monotonic() - started >= self.settings.slow_seconds
            await self.record(provider, admission.probe, "fail" if slow else "neutral")
            raise
        except BaseException as exc:
            await self.record(provider, admission.probe, outcome_of(exc))
            raise
        if not admission.quiet:
            await self.record(provider, admission.probe, "ok")

    async def acquire(self, provider: str) -> bool:
        """Allow one call (True when it is the half-open probe) or raise ``ProviderCircuitOpen``."""
        return (await self.admit(provider)).probe

    async def admit(self, provider: str) -> Admission:
        """Allow one call or raise ``ProviderCircuitOpen``."""
        code, value = await self._shared("acquire", ACQUIRE_LUA, provider, self.acquire_args())
        if code is None:
            return self.admitted(provider, *self._acquire_local(provider), shared=False)
        return self.admitted(provider, int(code), int(value))

    def acquire_args(self) -> list[Any]:
        """``ACQUIRE_LUA``'s ARGV."""
        return [int(self.settings.probe_seconds * 1000)]

    def admitted(self, provider: str, code: int, value: int, shared: bool = True) -> Admission:
        """The admission ``ACQUIRE_LUA`` (``shared``) or the local circuit answered ``(code,
        value)``; raises ``ProviderCircuitOpen`` when it refused."""
        if code == 2:
            BREAKER_REJECTIONS.labels(provider).inc()
            raise ProviderCircuitOpen(f"{provider} is failing: its circuit breaker is open",
                                      details={"provider": provider, "breaker": "open"},  # as CCXT's errors
                                      retry_after=max(1.0, math.ceil(value / 1000)))
        if code == 1:
            self._changed(provider, "half_open")
            return _PROBE
        return _QUIET if shared and value == 0 else _ALLOWED

    async def record(self, provider: str, probe: bool, outcome: str) -> None:
        """Record one call's ``outcome`` (``ok``, ``fail``, ``neutral``)."""
        args = [outcome, "1" if probe else "0", self.settings.failure_threshold,
                int(self.settings.open_seconds * 1000)]
        state, changed = await self._shared("record", RECORD_LUA, provider, args)
        if state is None:
            state, changed = self._record_local(provider, probe, outcome)
        state = state.decode() if isinstance(state, bytes) else str(state)
        if int(changed):
            self._changed(provider, state)
            if state == "open":
                log.warning("%s: circuit breaker opened for %.0f s", provider, self.settings.open_seconds)
            else:
                log.info("%s: circuit breaker %s", provider, state)

    async def states(self, providers: list[str]) -> dict[str, str]:
        """Each provider's state (``closed``, ``open``, ``half_open``), for readiness."""
        if not providers:
            return {}
        if self.redis is not None:
            redis, keys = self.redis, [self.redis.key("breaker", p) for p in providers]
            try:
                raw = await redis.run(lambda r: self._script(r, "read", READ_LUA)(keys=keys))
                found = [s.decode() if isinstance(s, bytes) else str(s) for s in raw]
                out = dict(zip(providers, found, strict=True))
            except DataSourceError as exc:
                log.debug("breaker states read locally: %s", exc.details)
                out = self.local_states(providers)
        else:
            out = self.local_states(providers)
        for provider, state in out.items():
            BREAKER_STATE.labels(provider).set(STATES.index(state))
        return out

    def local_states(self, providers: list[str]) -> dict[str, str]:
        """This process's own view (what it decides by while Redis is down)."""
        return {p: self._state_local(p) for p in providers}

    # --- Redis ---------------------------------------------------------------------------------
    async def _shared(self, name: str, lua: str, provider: str, args: list[Any]) -> tuple[Any, Any]:
        """Run a script on the provider's hash; (None, None) when Redis is unavailable."""
        if self.redis is None:
            return None, None
        redis, key = self.redis, self.redis.key("breaker", provider)
        try:
            code, value = await redis.run(lambda r: self._script(r, name, lua)(keys=[key], args=args))
            return code, value
        except DataSourceError as exc:
            log.debug("circuit breaker of %s decided locally: %s", provider, exc.details)
            return None, None

    def _script(self, client: Any, name: str, lua: str) -> Any:
        script = self._scripts.get((id(client), name))
        if script is None:
            script = self._scripts[(id(client), name)] = client.register_script(lua)
        return script

    # --- In memory (Redis down) ----------------------------------------------------------------
    def _circuit(self, provider: str) -> Circuit:
        circuit = self._local.get(provider)
        if circuit is None:
            st = self.settings
            circuit = self._local[provider] = Circuit(st.failure_threshold, st.open_seconds,
                                                      st.probe_seconds)
        return circuit

    def _acquire_local(self, provider: str) -> tuple[int, int]:
        code, seconds = self._circuit(provider).acquire()
        return code, int(seconds * 1000)

    def _record_local(self, provider: str, probe: bool, outcome: str) -> tuple[str, int]:
        circuit = self._circuit(provider)
        changed = circuit.record(probe, outcome)
        return circuit.state, int(changed)

    def _state_local(self, provider: str) -> str:
        circuit = self._local.get(provider)
        return "closed" if circuit is None else circuit.state

    def _changed(self, provider: str, state: str) -> None:
        BREAKER_TRANSITIONS.labels(provider, state).inc()
        BREAKER_STATE.labels(provider).set(STATES.index(state))
