"""The limits' store: GCRA buckets, the provider budget's pauses and the circuit breakers, behind
one interface with two backends (quart-rate-limiter's ``store.py`` shape).

- ``RedisStore`` keeps the state in Redis and decides by atomic Lua scripts on Redis' own clock,
  so every instance shares one bucket, one pause and one breaker per key.
- ``MemoryStore`` keeps the same state in process memory (on the monotonic clock): each instance
  decides alone. The app uses it while Redis is down.
- ``Store`` holds both and asks Redis while it answers, else memory: it swaps to memory on a
  Redis failure and back on the next call that Redis answers, as the hub's bus backends do.

Each algorithm is written once per backend: the GCRA as ``GCRA_FN`` (Lua) and
``MemoryStore.gcra_at`` (Python); the breaker's state machine as ``BREAKER_FN`` (Lua) and
``services.upstream.circuit.Circuit`` (Python). The rate limiter (``app_extensions.ratelimit``),
the provider budget and the breaker (``services.upstream.budget``, ``.breaker``) and the gate that
asks both in one script (``.gate``) all use them. The rate limiter swaps on its own: its leases
are taken from ``RedisStore`` only, and while Redis fails it takes one token at a time from
``MemoryStore`` (and reports ``mode: local``).

A key is a tuple of parts: ``RedisStore`` joins it under the app's key prefix
(``RedisClient.key``), ``MemoryStore`` joins it with ``:``.

The GCRA (``gcra``): a bucket of ``burst`` tokens refilled one per ``emission`` ms, stored as its
theoretical arrival time (TAT). Two ways to take from it:

- ``partial`` (the rate limiter's leases): take as many of ``want`` tokens as the bucket holds now
  (at least one, else refused with the ms until the next one frees up); ``peek`` only tells
  whether one would be granted.
- otherwise (the provider budget's schedule): reserve ``want`` tokens at once, possibly in the
  future: granted with the ms to wait until the reservation's slot, refused when that wait would
  exceed ``max_wait`` ms.

Answers are ``Gcra(granted, remaining, ms)``: ``granted`` 0 is a refusal and ``ms`` the wait
before retrying; otherwise ``ms`` is the wait before the slot (always 0 in ``partial`` mode).
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from core.errors import DataSourceError
from services.upstream.circuit import ALLOWED, Circuit

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The memory backend forgets the least recently used buckets past this many.
LOCAL_MAX_KEYS = 50_000

Key = tuple[str, ...]


class RedisRunner(Protocol):
    """What the Redis backend needs from the app's Redis owner (``RedisClient``)."""

    def key(self, *parts: object) -> str: ...

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T: ...


class Gcra(NamedTuple):
    """One GCRA answer (see the module's docstring)."""

    granted: int
    remaining: int
    ms: int


class Budget(NamedTuple):
    """The provider budget's answer: ``status`` 1 go after ``ms``, 0 over budget (retry in
    ``ms``), -1 paused (for ``ms`` more)."""

    status: int
    ms: int


class Admit(NamedTuple):
    """The breaker's admission: ``code`` 0 allowed (``value``: failures counted), 1 allowed as
    the half-open probe, 2 refused (retry in ``value`` ms)."""

    code: int
    value: int


class Recorded(NamedTuple):
    """The breaker's state after a recorded outcome, and whether it changed."""

    state: str
    changed: bool


class Gate(NamedTuple):
    """The gate's two answers; a refusing breaker leaves the budget untouched (``Budget(1, 0)``)."""

    admit: Admit
    budget: Budget


# --- Redis: the algorithms in Lua ---------------------------------------------------------------
#: Redis' clock in ms.
NOW_FN = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: The GCRA (``MemoryStore.gcra_at`` is the same in Python). Returns {granted, remaining, ms}.
GCRA_FN = """
local function gcra(key, now, emission, burst, want, max_wait, partial, peek)
  local window = emission * burst
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then tat = now end
  local n = want
  if partial then
    local free = math.floor((now + window - tat) / emission + 1e-6)
    if free < 1 then return {0, 0, math.ceil(tat + emission - window - now)} end
    if peek then return {1, 0, 0} end
    n = math.min(want, free)
  end
  local new_tat = tat + n * emission
  local wait = new_tat - window - now
  if partial or wait < 0 then wait = 0 end
  if wait > max_wait then return {0, 0, math.ceil(wait)} end
  if peek then return {n, 0, math.ceil(wait)} end
  redis.call('SET', key, string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
  return {n, math.max(0, math.floor((window - (new_tat - now)) / emission + 1e-6)), math.ceil(wait)}
end
"""

#: The provider budget: a pause key (set by ``pause``), then the GCRA schedule (emission 0: no
#: budget). Returns {status, ms} (``Budget``).
BUDGET_FN = """
local function budget(pause_key, tat_key, now, emission, burst, max_wait, weight)
  local pause = redis.call('PTTL', pause_key)
  if pause > 0 then return {-1, pause} end
  if emission <= 0 then return {1, 0} end
  local g = gcra(tat_key, now, emission, burst, weight, max_wait, false, false)
  if g[1] == 0 then return {0, g[3]} end
  return {1, g[3]}
end
"""

#: The breaker's state machine (``Circuit`` is the same in Python): one hash per breaker, fields
#: ``state``, ``failures``, ``until`` and ``probe_until`` (ms on Redis' clock).
BREAKER_FN = """
local function breaker_acquire(key, now, probe_ms)
  local st = redis.call('HMGET', key, 'state', 'until', 'probe_until', 'failures')
  local state = st[1] or 'closed'
  if state == 'closed' then return {0, tonumber(st[4]) or 0} end
  local open_until = tonumber(st[2]) or 0
  if state == 'open' and now < open_until then return {2, open_until - now} end
  local probe_until = tonumber(st[3]) or 0
  if now < probe_until then return {2, probe_until - now} end
  redis.call('HSET', key, 'state', 'half_open', 'probe_until', now + probe_ms)
  return {1, 0}
end

local function breaker_record(key, now, outcome, probe, threshold, open_ms)
  local st = redis.call('HMGET', key, 'state', 'failures')
  local state = st[1] or 'closed'
  if outcome == 'neutral' then
    if probe and state == 'half_open' then redis.call('HSET', key, 'probe_until', 0) end
    return {state, 0}
  end
  if outcome == 'ok' then
    if state ~= 'closed' then
      redis.call('HSET', key, 'state', 'closed', 'failures', 0, 'until', 0, 'probe_until', 0)
      return {'closed', 1}
    end
    if (tonumber(st[2]) or 0) > 0 then redis.call('HSET', key, 'failures', 0) end
    return {'closed', 0}
  end
  if state == 'half_open' then
    redis.call('HSET', key, 'state', 'open', 'until', now + open_ms, 'probe_until', 0)
    return {'open', 1}
  end
  if state == 'open' then return {'open', 0} end
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  if failures >= threshold then
    redis.call('HSET', key, 'state', 'open', 'until', now + open_ms, 'probe_until', 0)
    return {'open', 1}
  end
  return {'closed', 0}
end

local function breaker_read(key, now)
  local st = redis.call('HMGET', key, 'state', 'until')
  local state = st[1] or 'closed'
  if state == 'open' and now >= (tonumber(st[2]) or 0) then state = 'half_open' end
  return state
end
"""

_LIB = NOW_FN + GCRA_FN + BUDGET_FN + BREAKER_FN

#: The scripts, each the functions above and a call. KEYS and ARGV as the methods' arguments.
SCRIPTS = {
    # KEYS: bucket. ARGV: emission ms, burst, want, max wait ms, partial (1/0), peek (1/0).
    "gcra": _LIB + "return gcra(KEYS[1], now_ms(), tonumber(ARGV[1]), tonumber(ARGV[2]), "
                   "tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6] == '1')\n",
    # KEYS: pause, schedule. ARGV: emission ms, burst, max wait ms, weight.
    "budget": _LIB + "return budget(KEYS[1], KEYS[2], now_ms(), tonumber(ARGV[1]), "
                     "tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))\n",
    # KEYS: breaker. ARGV: probe ms.
    "acquire": _LIB + "return breaker_acquire(KEYS[1], now_ms(), tonumber(ARGV[1]))\n",
    # KEYS: breaker. ARGV: outcome, probe (1/0), threshold, open ms.
    "record": _LIB + "return breaker_record(KEYS[1], now_ms(), ARGV[1], ARGV[2] == '1', "
                     "tonumber(ARGV[3]), tonumber(ARGV[4]))\n",
    # KEYS: one breaker each.
    "read": _LIB + "local now, out = now_ms(), {}\n"
                   "for i, key in ipairs(KEYS) do out[i] = breaker_read(key, now) end\n"
                   "return out\n",
    # KEYS: breaker, pause, schedule. ARGV: probe ms, then the budget's four. Returns the
    # breaker's {code, value}, then the budget's {status, ms}.
    "gate": _LIB + "local now = now_ms()\n"
                   "local b = breaker_acquire(KEYS[1], now, tonumber(ARGV[1]))\n"
                   "if b[1] == 2 then return {b[1], b[2], 1, 0} end\n"
                   "local g = budget(KEYS[2], KEYS[3], now, tonumber(ARGV[2]), tonumber(ARGV[3]), "
                   "tonumber(ARGV[4]), tonumber(ARGV[5]))\n"
                   "return {b[1], b[2], g[1], g[2]}\n",
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StoreBackend(ABC):
    """The store's interface; ``RedisStore`` and ``MemoryStore`` implement it. The breaker's
    settings come with every call (a breaker: probe ms, failure threshold, open ms)."""

    @abstractmethod
    async def gcra(self, key: Key, emission: float, burst: int, want: int = 1, max_wait: float = 0.0,
                   partial: bool = False, peek: bool = False) -> Gcra:
        """Take from ``key``'s bucket of ``burst`` tokens, one per ``emission`` ms (module
        docstring)."""

    @abstractmethod
    async def budget(self, pause: Key, schedule: Key, emission: float, burst: int, max_wait: float,
                     weight: int = 1) -> Budget:
        """Refuse while ``pause`` is set; else reserve ``weight`` tokens of ``schedule`` (emission
        0: no budget, go)."""

    @abstractmethod
    async def pause(self, key: Key, ms: int) -> None:
        """Set the pause ``key`` for ``ms``."""

    @abstractmethod
    async def acquire(self, key: Key, probe_ms: int, threshold: int, open_ms: int) -> Admit:
        """Admit one call through ``key``'s breaker (or refuse it)."""

    @abstractmethod
    async def record(self, key: Key, outcome: str, probe: bool, probe_ms: int, threshold: int,
                     open_ms: int) -> Recorded:
        """Record one call's ``outcome`` (``ok``, ``fail``, ``neutral``) on ``key``'s breaker."""

    @abstractmethod
    async def states(self, keys: Sequence[Key]) -> list[str]:
        """Each breaker's state: ``closed``, ``open`` or ``half_open`` (an open one whose time is
        over reads as half_open: its next call is the probe)."""

    @abstractmethod
    async def gate(self, breaker: Key, pause: Key, schedule: Key, probe_ms: int, threshold: int,
                   open_ms: int, emission: float, burst: int, max_wait: float, weight: int = 1) -> Gate:
        """``acquire`` and, unless it refused, ``budget``, atomically."""


class RedisStore(StoreBackend):
    """The state in Redis (shared by every instance); a failure raises ``DataSourceError``."""

    def __init__(self, redis: RedisRunner) -> None:
        self.redis = redis
        self._scripts: dict[tuple[int, str], Any] = {}

    async def gcra(self, key: Key, emission: float, burst: int, want: int = 1, max_wait: float = 0.0,
                   partial: bool = False, peek: bool = False) -> Gcra:
        args = [emission, burst, want, max_wait, int(partial), int(peek)]
        granted, remaining, ms = await self._run("gcra", [key], args)
        return Gcra(int(granted), int(remaining), int(ms))

    async def budget(self, pause: Key, schedule: Key, emission: float, burst: int, max_wait: float,
                     weight: int = 1) -> Budget:
        status, ms = await self._run("budget", [pause, schedule], [emission, burst, max_wait, weight])
        return Budget(int(status), int(ms))

    async def pause(self, key: Key, ms: int) -> None:
        full = self.redis.key(*key)
        await self.redis.run(lambda r: r.set(full, "1", px=ms))

    async def acquire(self, key: Key, probe_ms: int, threshold: int, open_ms: int) -> Admit:
        code, value = await self._run("acquire", [key], [probe_ms])
        return Admit(int(code), int(value))

    async def record(self, key: Key, outcome: str, probe: bool, probe_ms: int, threshold: int,
                     open_ms: int) -> Recorded:
        state, changed = await self._run("record", [key], [outcome, int(probe), threshold, open_ms])
        return Recorded(_text(state), bool(int(changed)))

    async def states(self, keys: Sequence[Key]) -> list[str]:
        return [_text(s) for s in await self._run("read", keys, [])]

    async def gate(self, breaker: Key, pause: Key, schedule: Key, probe_ms: int, threshold: int,
                   open_ms: int, emission: float, burst: int, max_wait: float, weight: int = 1) -> Gate:
        """One script: the breaker's ``acquire``, then, unless it refused, the ``budget``."""
        code, value, status, ms = await self._run(
            "gate", [breaker, pause, schedule], [probe_ms, emission, burst, max_wait, weight])
        return Gate(Admit(int(code), int(value)), Budget(int(status), int(ms)))

    async def _run(self, name: str, keys: Sequence[Key], args: list[Any]) -> Any:
        full = [self.redis.key(*k) for k in keys]
        return await self.redis.run(lambda r: self._script(r, name)(keys=full, args=args))

    def _script(self, client: Any, name: str) -> Any:
        script = self._scripts.get((id(client), name))
        if script is None:
            script = self._scripts[(id(client), name)] = client.register_script(SCRIPTS[name])
        return script


class MemoryStore(StoreBackend):
    """The same state in process memory (one instance's own), on the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: seconds; tests may step it.
        self.clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._paused: dict[str, float] = {}
        self._circuits: dict[str, Circuit] = {}

    def gcra_at(self, key: Key, now: float, emission: float, burst: int, want: int = 1,
                max_wait: float = 0.0, partial: bool = False, peek: bool = False) -> Gcra:
        """``GCRA_FN`` in Python, at ``now`` ms."""
        name = ":".join(key)
        window = emission * burst
        tat = max(self._tat.get(name, now), now)
        n = want
        if partial:
            free = math.floor((now + window - tat) / emission + 1e-6)
            if free < 1:
                return Gcra(0, 0, math.ceil(tat + emission - window - now))
            if peek:
                return Gcra(1, 0, 0)
            n = min(want, free)
        new_tat = tat + n * emission
        wait = 0.0 if partial else max(0.0, new_tat - window - now)
        if wait > max_wait:
            return Gcra(0, 0, math.ceil(wait))
        if peek:
            return Gcra(n, 0, math.ceil(wait))
        self._tat[name] = round(new_tat, 3)  # as Redis keeps it ('%.3f')
        self._tat.move_to_end(name)
        while len(self._tat) > LOCAL_MAX_KEYS:
            self._tat.popitem(last=False)
        remaining = max(0, math.floor((window - (new_tat - now)) / emission + 1e-6))
        return Gcra(n, remaining, math.ceil(wait))

    async def gcra(self, key: Key, emission: float, burst: int, want: int = 1, max_wait: float = 0.0,
                   partial: bool = False, peek: bool = False) -> Gcra:
        return self.gcra_at(key, self.clock() * 1000, emission, burst, want, max_wait, partial, peek)

    async def budget(self, pause: Key, schedule: Key, emission: float, burst: int, max_wait: float,
                     weight: int = 1) -> Budget:
        now = self.clock() * 1000
        paused_until = self._paused.get(":".join(pause), 0.0)
        if paused_until > now:
            return Budget(-1, math.ceil(paused_until - now))
        if emission <= 0:
            return Budget(1, 0)
        g = self.gcra_at(schedule, now, emission, burst, weight, max_wait)
        return Budget(1 if g.granted else 0, g.ms)

    async def pause(self, key: Key, ms: int) -> None:
        self._paused[":".join(key)] = self.clock() * 1000 + ms

    def circuit(self, key: Key, probe_ms: int, threshold: int, open_ms: int) -> Circuit:
        """The breaker of ``key`` (made on first use), with these settings."""
        name = ":".join(key)
        circuit = self._circuits.get(name)
        if circuit is None:
            circuit = self._circuits[name] = Circuit()
        circuit.threshold, circuit.open_seconds = threshold, open_ms / 1000
        circuit.probe_seconds = probe_ms / 1000
        return circuit

    async def acquire(self, key: Key, probe_ms: int, threshold: int, open_ms: int) -> Admit:
        circuit = self.circuit(key, probe_ms, threshold, open_ms)
        code, seconds = circuit.acquire()
        return Admit(code, circuit.failures if code == ALLOWED else int(seconds * 1000))

    async def record(self, key: Key, outcome: str, probe: bool, probe_ms: int, threshold: int,
                     open_ms: int) -> Recorded:
        circuit = self.circuit(key, probe_ms, threshold, open_ms)
        changed = circuit.record(probe, outcome)
        return Recorded(circuit.state, changed)

    def circuit_state(self, key: Key) -> str:
        """The state of ``key``'s breaker (``closed`` when never used)."""
        circuit = self._circuits.get(":".join(key))
        return "closed" if circuit is None else circuit.state

    async def states(self, keys: Sequence[Key]) -> list[str]:
        return [self.circuit_state(key) for key in keys]

    async def gate(self, breaker: Key, pause: Key, schedule: Key, probe_ms: int, threshold: int,
                   open_ms: int, emission: float, burst: int, max_wait: float, weight: int = 1) -> Gate:
        admit = await self.acquire(breaker, probe_ms, threshold, open_ms)
        if admit.code == 2:
            return Gate(admit, Budget(1, 0))
        return Gate(admit, await self.budget(pause, schedule, emission, burst, max_wait, weight))


#: Told why an operation fell back to memory.
OnLocal = Callable[[DataSourceError], None]


class Store:
    """``redis`` while it answers, else ``memory``: each call asks Redis first and, when it
    fails (``DataSourceError``), decides in memory, so the store swaps back by itself. Without
    ``redis`` the state is this instance's own. The Redis client may be handed in before it
    connects: until then every call is decided in memory."""

    def __init__(self, redis: RedisRunner | None = None, memory: MemoryStore | None = None) -> None:
        self.memory = memory if memory is not None else MemoryStore()
        self.shared = RedisStore(redis) if redis is not None else None

    @property
    def redis(self) -> RedisRunner | None:
        return self.shared.redis if self.shared is not None else None

    async def _either(self, op: Callable[[StoreBackend], Awaitable[T]], on_local: OnLocal | None) -> T:
        if self.shared is not None:
            try:
                return await op(self.shared)
            except DataSourceError as exc:
                if on_local is not None:
                    on_local(exc)
        return await op(self.memory)

    async def gcra(self, key: Key, emission: float, burst: int, want: int = 1, max_wait: float = 0.0,
                   partial: bool = False, peek: bool = False, on_local: OnLocal | None = None) -> Gcra:
        return await self._either(lambda b: b.gcra(key, emission, burst, want, max_wait, partial, peek),
                                  on_local)

    async def budget(self, pause: Key, schedule: Key, emission: float, burst: int, max_wait: float,
                     weight: int = 1, on_local: OnLocal | None = None) -> Budget:
        return await self._either(lambda b: b.budget(pause, schedule, emission, burst, max_wait, weight),
                                  on_local)

    async def pause(self, key: Key, ms: int, on_local: OnLocal | None = None) -> None:
        """Pause in memory always (this instance honours it even if Redis then fails), and in
        Redis for the others."""
        await self.memory.pause(key, ms)
        if self.shared is not None:
            try:
                await self.shared.pause(key, ms)
            except DataSourceError as exc:
                if on_local is not None:
                    on_local(exc)

    async def acquire(self, key: Key, probe_ms: int, threshold: int, open_ms: int,
                      on_local: OnLocal | None = None) -> Admit:
        return await self._either(lambda b: b.acquire(key, probe_ms, threshold, open_ms), on_local)

    async def record(self, key: Key, outcome: str, probe: bool, probe_ms: int, threshold: int,
                     open_ms: int, on_local: OnLocal | None = None) -> Recorded:
        return await self._either(lambda b: b.record(key, outcome, probe, probe_ms, threshold, open_ms),
                                  on_local)

    async def states(self, keys: Sequence[Key], on_local: OnLocal | None = None) -> list[str]:
        return await self._either(lambda b: b.states(keys), on_local)


__all__ = ["Admit", "Budget", "Gate", "Gcra", "MemoryStore", "Recorded", "RedisRunner", "RedisStore",
           "Store", "StoreBackend"]
