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

State lives in the limits' store (``services.upstream.store``): one Redis hash per provider
(``{prefix}:breaker:{provider}``), changed by atomic scripts on Redis' own clock. When Redis is
down the store's memory backend runs the same state machine (``Circuit``; each instance then
decides alone until Redis is back).
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

from core.errors import AppError, DataSourceError, NetworkPluginError, RateLimitedPluginError
from core.metrics import BREAKER_REJECTIONS, BREAKER_STATE, BREAKER_TRANSITIONS
from services.settings import build, setting
from services.upstream.store import Key, RedisRunner, Store

log = logging.getLogger(__name__)
STATES = ("closed", "half_open", "open")

@dataclass(frozen=True)
class Admission:
    """A call let through: as the half-open ``probe``, or with ``nothing_to_reset``: the breaker
    was closed with no failure counted when it began, so its success is not recorded."""

    probe: bool = False
    nothing_to_reset: bool = False


_NOTHING_TO_RESET, _ALLOWED, _PROBE = Admission(nothing_to_reset=True), Admission(), Admission(probe=True)


class ProviderCircuitOpen(NetworkPluginError):
    """The provider's circuit breaker is open: no call was made. Answer from stored data, else
    503 ``provider_unavailable`` with ``retry_after``; do not retry before it."""



@dataclass(frozen=True)
class BreakerSettings:
    """Thresholds, from ``BREAKER_*`` in the config (``from_config``)."""

    failure_threshold: int = setting("BREAKER_FAILURE_THRESHOLD")
    open_seconds: float = setting("BREAKER_OPEN_SECONDS")
    probe_seconds: float = setting("BREAKER_PROBE_SECONDS")
    slow_seconds: float = setting("BREAKER_SLOW_SECONDS")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BreakerSettings:
        """Built and checked once; raises ``ConfigError`` (a ``ValueError``) naming the wrong setting."""
        return build(cls, config)


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
    """Per-provider breakers, shared across instances through ``redis`` (None: this instance
    only)."""

    def __init__(self, settings: BreakerSettings, redis: RedisRunner | None = None) -> None:
        self.settings = settings
        #: The breakers' state: in Redis, in memory while it fails.
        self.store = Store(redis)

    @property
    def redis(self) -> RedisRunner | None:
        return self.store.redis

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
        if not admission.nothing_to_reset:
            await self.record(provider, admission.probe, "ok")

    async def acquire(self, provider: str) -> bool:
        """Allow one call (True when it is the half-open probe) or raise ``ProviderCircuitOpen``."""
        return (await self.admit(provider)).probe

    async def admit(self, provider: str) -> Admission:
        """Allow one call or raise ``ProviderCircuitOpen``."""
        code, value = await self.store.acquire(self.key(provider), *self.acquire_args(),
                                               on_local=lambda exc: self._local(provider, exc))
        return self.admitted(provider, code, value)

    @staticmethod
    def key(provider: str) -> Key:
        """The store's key of ``provider``'s breaker."""
        return ("breaker", provider)

    def acquire_args(self) -> tuple[int, int, int]:
        """The breaker's settings as the store takes them: probe ms, threshold, open ms."""
        st = self.settings
        return int(st.probe_seconds * 1000), st.failure_threshold, int(st.open_seconds * 1000)

    def admitted(self, provider: str, code: int, value: int) -> Admission:
        """The admission the store answered ``(code, value)`` (``Admit``); raises
        ``ProviderCircuitOpen`` when it refused."""
        if code == 2:
            BREAKER_REJECTIONS.labels(provider).inc()
            raise ProviderCircuitOpen(f"{provider} is failing: its circuit breaker is open",
                                      details={"provider": provider, "breaker": "open"},  # as CCXT's errors
                                      retry_after=max(1.0, math.ceil(value / 1000)))
        if code == 1:
            self._changed(provider, "half_open")
            return _PROBE
        return _NOTHING_TO_RESET if value == 0 else _ALLOWED

    async def record(self, provider: str, probe: bool, outcome: str) -> None:
        """Record one call's ``outcome`` (``ok``, ``fail``, ``neutral``)."""
        state, changed = await self.store.record(self.key(provider), outcome, probe, *self.acquire_args(),
                                                 on_local=lambda exc: self._local(provider, exc))
        if changed:
            self._changed(provider, state)
            if state == "open":
                log.warning("%s: circuit breaker opened for %.0f s", provider, self.settings.open_seconds)
            else:
                log.info("%s: circuit breaker %s", provider, state)

    async def states(self, providers: list[str]) -> dict[str, str]:
        """Each provider's state (``closed``, ``open``, ``half_open``), for readiness."""
        if not providers:
            return {}
        found = await self.store.states([self.key(p) for p in providers], on_local=self._read_local)
        out = dict(zip(providers, found, strict=True))
        for provider, state in out.items():
            BREAKER_STATE.labels(provider).set(STATES.index(state))
        return out

    def local_states(self, providers: list[str]) -> dict[str, str]:
        """This process's own view (what it decides by while Redis is down)."""
        return {p: self.store.memory.circuit_state(self.key(p)) for p in providers}

    @staticmethod
    def _local(provider: str, exc: DataSourceError) -> None:
        log.debug("circuit breaker of %s decided locally: %s", provider, exc.details)

    @staticmethod
    def _read_local(exc: DataSourceError) -> None:
        log.debug("breaker states read locally: %s", exc.details)

    def _changed(self, provider: str, state: str) -> None:
        BREAKER_TRANSITIONS.labels(provider, state).inc()
        BREAKER_STATE.labels(provider).set(STATES.index(state))
