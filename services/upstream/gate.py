"""The gate before every provider call, in one Redis round trip: the circuit breaker's admission
and the budget's slot.

``ProviderCalls.guard`` puts both gates before an upstream call: the provider's circuit breaker
(``services.upstream.breaker``: refuses at once while open) first, then its budget and ban pause
(``services.upstream.budget``). Run one after the other they cost two scripts a call, and Python's
Redis client spends more CPU on a command than Redis does (~0.3 ms here): the store's ``gate``
(``services.upstream.store.RedisStore.gate``) runs the breaker's admission and, unless it refused,
the budget's schedule in one script, built from the same Lua functions, with the same keys,
arguments and answers, so the decisions are the same, taken atomically. With the breaker's quiet
successes (``Admission.nothing_to_reset``: nothing to record) a call then costs one script. The
script's keys and settings are fixed per breaker, provider and call weight: they are worked out
once, not at every call. When Redis is unavailable, each gate decides in process memory as it does
alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from core.errors import DataSourceError
from services.upstream.breaker import CircuitBreaker
from services.upstream.budget import ProviderBudget
from services.upstream.store import Gate, RedisStore


class ProviderGate:
    """The breaker and the budget of every provider, asked together."""

    def __init__(self, budget: ProviderBudget, breaker: CircuitBreaker) -> None:
        self.budget, self.breaker = budget, breaker
        shared = breaker.store.shared
        #: Where both gates are asked in one script: their Redis, when they share one.
        self.shared: RedisStore | None = shared if shared is not None and breaker.redis is budget.redis else None
        #: The script's arguments by (breaker name, provider, weight).
        self._args: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    @asynccontextmanager
    async def guard(self, provider: str, testnet: bool = False, weight: int = 1) -> AsyncIterator[None]:
        """Admit one call of ``weight`` budget units (or raise ``ProviderCircuitOpen`` /
        ``RateLimitedPluginError``), run it, record how it ended. A testnet has a breaker of its
        own (another host) and the provider's budget."""
        name = f"{provider}:testnet" if testnet else provider
        answer = await self._ask(provider, name, weight)
        if answer is None:  # no shared Redis: each gate on its own (and in memory)
            async with self.breaker.guard(name), self.budget.guard(provider, weight):
                yield
            return
        (code, value), (status, ms) = answer
        async with self.breaker.watch(name, self.breaker.admitted(name, code, value)):
            await self.budget.taken(provider, status, ms)
            async with self.budget.watch(provider):
                yield

    async def _ask(self, provider: str, name: str, weight: int) -> Gate | None:
        if self.shared is None:
            return None
        args = self._args.get((name, provider, weight))
        if args is None:
            args = self._args[name, provider, weight] = (
                self.breaker.key(name), *self.budget.keys(provider), *self.breaker.acquire_args(),
                *self.budget.take_args(provider, weight))
        try:
            return await self.shared.gate(*args)
        except DataSourceError:
            return None
