"""The gate before every provider call, in one Redis round trip: the circuit breaker's admission
and the budget's slot.

``ProviderCalls.guard`` puts both gates before an upstream call: the provider's circuit breaker
(``services.upstream.breaker``: refuses at once while open) first, then its budget and ban pause
(``services.upstream.budget``). Run one after the other they cost two scripts a call, and Python's
Redis client spends more CPU on a command than Redis does (~0.3 ms here): ``GATE_LUA`` runs the
breaker's ``ACQUIRE_LUA`` and, unless it refused, the budget's ``BUDGET_LUA`` in one script, with
the same keys, arguments and answers, so the decisions are the same, taken atomically. With the
breaker's quiet successes (``Admission.quiet``: nothing to record) a call then costs one script.
When Redis is unavailable, each gate decides in process memory as it does alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from core.errors import DataSourceError
from services.upstream.breaker import ACQUIRE_LUA, CircuitBreaker
from services.upstream.budget import BUDGET_LUA, ProviderBudget

#: KEYS: the breaker's hash, the budget's pause and schedule. ARGV: ``ACQUIRE_LUA``'s (probe ms),
#: then ``BUDGET_LUA``'s (emission ms, burst, longest wait ms, weight). Returns {breaker code,
#: its value, budget status, its ms}; a refusing breaker leaves the budget untouched.
GATE_LUA = (
    "local function admit(KEYS, ARGV)" + ACQUIRE_LUA + "end\n"
    "local function take(KEYS, ARGV)" + BUDGET_LUA + "end\n"
    "local b = admit({KEYS[1]}, {ARGV[1]})\n"
    "if b[1] == 2 then return {b[1], b[2], 1, 0} end\n"
    "local g = take({KEYS[2], KEYS[3]}, {ARGV[2], ARGV[3], ARGV[4], ARGV[5]})\n"
    "return {b[1], b[2], g[1], g[2]}\n"
)


class ProviderGate:
    """The breaker and the budget of every provider, asked together."""

    def __init__(self, budget: ProviderBudget, breaker: CircuitBreaker) -> None:
        self.budget, self.breaker = budget, breaker
        self._scripts: dict[int, Any] = {}

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
        code, value, status, ms = answer
        async with self.breaker.watch(name, self.breaker.admitted(name, code, value)):
            await self.budget.taken(provider, status, ms)
            async with self.budget.watch(provider):
                yield

    async def _ask(self, provider: str, name: str, weight: int) -> tuple[int, int, int, int] | None:
        redis = self.breaker.redis
        if redis is None or redis is not self.budget.redis:
            return None
        keys = [redis.key("breaker", name), *self.budget.keys(provider)]
        args = [*self.breaker.acquire_args(), *self.budget.take_args(provider, weight)]
        try:
            code, value, status, ms = await redis.run(lambda r: self._script(r)(keys=keys, args=args))
        except DataSourceError:
            return None
        return int(code), int(value), int(status), int(ms)

    def _script(self, client: Any) -> Any:
        script = self._scripts.get(id(client))
        if script is None:
            script = self._scripts[id(client)] = client.register_script(GATE_LUA)
        return script
